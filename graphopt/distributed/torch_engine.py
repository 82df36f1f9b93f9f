"""The torch.distributed engine (gloo on CPU): collectives on ``torch.from_numpy`` views of the
numpy buffers (zero-copy). torch is imported here, lazily; it is never a dependency of graphopt.

gloo has a per-operation timeout of its own (the process group's ``timeout``), so no watchdog: a
collective whose peer died raises at once (connection closed), one whose peer froze raises after the
timeout, on every survivor, as `CommunicationError` (gloo raises ``RuntimeError``). torchrun then ends
the remaining processes."""

from __future__ import annotations

import atexit
import datetime

import numpy as np

from graphopt.distributed.communicator import TIMEOUT, Communicator, checked_timeout


class TorchDistributed(Communicator):
    """Collectives over torch.distributed's default process group, initialized here from the
    launcher's environment (torchrun: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
    if it is not already. ``timeout`` (seconds, default `graphopt.distributed.communicator.TIMEOUT`) bounds
    every collective: a peer that froze makes the others raise after it (gloo's own timeout); None:
    torch's default (30 min). A process group the caller initialized keeps its own timeout."""

    engine = "torch"

    def __init__(self, backend: str = "gloo", timeout: float | None = TIMEOUT):
        timeout = checked_timeout(timeout, "graphopt.distributed.init('torch')")
        try:
            import torch
            import torch.distributed as dist
        except ImportError as error:
            raise ImportError("graphopt.distributed: the torch engine needs torch (pip install torch)") from error
        if not dist.is_available():
            raise RuntimeError("graphopt.distributed: this torch build has no torch.distributed")
        self._torch, self._dist = torch, dist
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=None if timeout is None else datetime.timedelta(seconds=timeout))
            # the group graphopt made is destroyed before the interpreter exits: left to the interpreter's
            # teardown, gloo's threads can be destroyed while joinable (std::terminate, SIGABRT)
            atexit.register(self.close)
        self._failures = (RuntimeError,)  # gloo: connection closed / reset, timed out (DistBackendError too)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def _tensor(self, buffer: np.ndarray):
        return self._torch.from_numpy(buffer.reshape(-1))

    def _allreduce_sum(self, buffer: np.ndarray) -> None:
        self._dist.all_reduce(self._tensor(buffer), op=self._dist.ReduceOp.SUM)

    def _allgather(self, shard: np.ndarray, out: np.ndarray) -> None:
        parts = list(self._tensor(out).chunk(self.world_size))  # views of out: gathered in place
        self._dist.all_gather(parts, self._tensor(shard))

    def _broadcast(self, buffer: np.ndarray, root: int) -> None:
        self._dist.broadcast(self._tensor(buffer), src=root)

    def _barrier(self) -> None:
        self._dist.barrier()

    def close(self) -> None:
        """Destroy the process group (at the end of a run)."""
        super().close()
        if self._dist.is_initialized():
            self._dist.destroy_process_group()
