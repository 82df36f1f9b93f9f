"""The MPI engine: mpi4py's buffer collectives on numpy arrays (zero-copy), any MPI library
(the ``mpich`` wheel of the ``distributed`` extra, or a site's Open MPI / Intel MPI)."""

from __future__ import annotations

import numpy as np

from graphopt.distributed.communicator import Communicator


class MPI(Communicator):
    """Collectives over ``MPI.COMM_WORLD`` (or ``comm``); mpi4py is imported here, lazily."""

    engine = "mpi"

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI as mpi
        except ImportError as error:
            raise ImportError("graphopt.distributed: the MPI engine needs mpi4py and an MPI library: "
                              "pip install 'graphopt[distributed]' (mpi4py and the mpich wheel)") from error
        self._mpi = mpi
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()

    def _allreduce_sum(self, buffer: np.ndarray) -> None:
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    def _reduce_scatter_sum(self, buffer: np.ndarray, out: np.ndarray) -> None:
        self.comm.Reduce_scatter_block(buffer, out, op=self._mpi.SUM)

    def _allgather(self, shard: np.ndarray, out: np.ndarray) -> None:
        self.comm.Allgather(shard, out)

    def _broadcast(self, buffer: np.ndarray, root: int) -> None:
        self.comm.Bcast(buffer, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()
