"""The MPI engine: mpi4py's buffer collectives on numpy arrays (zero-copy), any MPI library
(the ``mpich`` wheel of the ``distributed`` extra, or a site's Open MPI / Intel MPI).

MPI has no per-operation timeout, so every collective is watched (`graphopt.distributed.watchdog`):
one that waits longer than ``timeout`` seconds makes this process report it on stderr and call
``MPI_Abort``, which ends every process of the job. mpi4py's errors (``MPI.Exception``: its default
error handler returns codes, which it raises) become `CommunicationError`.
"""

from __future__ import annotations

import os

import numpy as np

from graphopt.distributed.communicator import TIMEOUT, Communicator, checked_timeout
from graphopt.distributed.watchdog import Watchdog

ABORT_CODE = 124
"""Exit status of a job the watchdog ended (``MPI_Abort``'s error code; 124 as ``timeout(1)``'s)."""


class MPI(Communicator):
    """Collectives over ``MPI.COMM_WORLD`` (or ``comm``); mpi4py is imported here, lazily.

    ``timeout``: seconds a collective may wait for its peers before the watchdog aborts the job
    (default `graphopt.distributed.communicator.TIMEOUT`); None: no watchdog (wait forever)."""

    engine = "mpi"

    def __init__(self, comm=None, timeout: float | None = TIMEOUT):
        timeout = checked_timeout(timeout, "graphopt.distributed.init('mpi')")
        try:
            from mpi4py import MPI as mpi
        except ImportError as error:
            raise ImportError("graphopt.distributed: the MPI engine needs mpi4py and an MPI library: "
                              "pip install 'graphopt[distributed]' (mpi4py and the mpich wheel)") from error
        self._mpi = mpi
        self._failures = (mpi.Exception,)
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        if timeout is not None and self.world_size > 1:
            if mpi.Query_thread() < mpi.THREAD_MULTIPLE:
                raise RuntimeError("graphopt.distributed: the MPI watchdog calls MPI_Abort from its own thread, "
                                   "which needs MPI_THREAD_MULTIPLE (mpi4py's default; check mpi4py.rc."
                                   f"thread_level), got level {mpi.Query_thread()}; or pass timeout=None")
            where = f"rank {self.rank} of {self.world_size} (mpi, pid {os.getpid()})"
            self._watchdog = Watchdog(timeout, where, self._abort)

    def _abort(self, message: str) -> None:
        """End the whole job: ``MPI_Abort`` on ``COMM_WORLD`` (the launcher kills every process)."""
        try:
            self._mpi.COMM_WORLD.Abort(ABORT_CODE)
        finally:
            os._exit(ABORT_CODE)  # never reached with a working MPI; never leave a watched hang behind

    def _allreduce_sum(self, buffer: np.ndarray) -> None:
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    def _reduce_scatter_sum(self, buffer: np.ndarray, out: np.ndarray) -> None:
        self.comm.Reduce_scatter_block(buffer, out, op=self._mpi.SUM)

    def _reduce_scatter_counts(self, buffer: np.ndarray, counts: list[int], out: np.ndarray) -> None:
        self.comm.Reduce_scatter(buffer, out, recvcounts=counts, op=self._mpi.SUM)

    def _allgather(self, shard: np.ndarray, out: np.ndarray) -> None:
        self.comm.Allgather(shard, out)

    def _broadcast(self, buffer: np.ndarray, root: int) -> None:
        self.comm.Bcast(buffer, root=root)

    def _barrier(self) -> None:
        self.comm.Barrier()
