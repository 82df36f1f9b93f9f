"""`Communicator`: the collectives graphopt needs, on flat numpy buffers, whatever the engine.

Every method works in place on (or fills) C-contiguous numpy arrays and is collective: every
process calls it, in the same order, with buffers of the same size and dtype. The engines
(`graphopt.distributed.mpi`, `graphopt.distributed.torch_engine`) do the communication;
graphopt writes no networking of its own.
"""

from __future__ import annotations

import numpy as np

OPS = ("sum", "average")


class Communicator:
    """The interface: ``rank``, ``world_size`` and five collectives. Engines override the
    ``_allreduce_sum`` / ``_broadcast`` / ``_allgather`` / ``barrier`` primitives; the checks,
    ``average`` and ``reduce_scatter`` are shared."""

    engine = "abstract"
    rank: int = 0
    world_size: int = 1

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        """Replace ``buffer`` by the element-wise sum (or ``"average"``: sum / world size) of every
        process's ``buffer``; returns it."""
        _check_buffer(buffer, "allreduce")
        _check_op(op, buffer, "allreduce")
        if self.world_size > 1 and buffer.size:
            self._allreduce_sum(buffer)
        if op == "average" and self.world_size > 1:
            buffer *= buffer.dtype.type(1 / self.world_size)
        return buffer

    def reduce_scatter(self, buffer: np.ndarray, op: str = "sum", out: np.ndarray | None = None) -> np.ndarray:
        """This process's shard (``rank``-th of ``world_size`` equal parts) of the reduction of every
        process's ``buffer``; ``buffer`` itself is left as the engine leaves it (use a copy to keep it)."""
        _check_buffer(buffer, "reduce_scatter")
        _check_op(op, buffer, "reduce_scatter")
        if buffer.size % self.world_size:
            raise ValueError(f"reduce_scatter: buffer of {buffer.size} elements does not split into "
                             f"{self.world_size} equal shards; pad it to a multiple of the world size")
        shard = buffer.size // self.world_size
        out = _output(out, shard, buffer.dtype, "reduce_scatter", "out")
        self._reduce_scatter_sum(buffer, out)
        if op == "average" and self.world_size > 1:
            out *= out.dtype.type(1 / self.world_size)
        return out

    def allgather(self, shard: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Every process's ``shard`` one after another, by rank, in ``out`` (``world_size * shard.size``
        elements)."""
        _check_buffer(shard, "allgather")
        out = _output(out, shard.size * self.world_size, shard.dtype, "allgather", "out")
        if self.world_size == 1:
            np.copyto(out, shard.reshape(-1))
        else:
            self._allgather(shard, out)
        return out

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """Replace ``buffer`` on every process by ``root``'s; returns it."""
        _check_buffer(buffer, "broadcast")
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast: root {root} is not a rank of this world of {self.world_size}")
        if self.world_size > 1 and buffer.size:
            self._broadcast(buffer, root)
        return buffer

    def barrier(self) -> None:
        """Return once every process has called it."""

    def _allreduce_sum(self, buffer: np.ndarray) -> None:  # pragma: no cover - engines override
        raise NotImplementedError

    def _reduce_scatter_sum(self, buffer: np.ndarray, out: np.ndarray) -> None:
        """Default: a full allreduce, then this rank's part (engines with a native one override)."""
        self.allreduce(buffer)
        np.copyto(out, buffer.reshape(-1)[self.rank * out.size:(self.rank + 1) * out.size])

    def _allgather(self, shard: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _broadcast(self, buffer: np.ndarray, root: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(engine={self.engine!r}, rank={self.rank}, world_size={self.world_size})"


class SingleProcess(Communicator):
    """The world of one process (no launcher): every collective leaves its buffer as it is."""

    engine = "single"

    def _reduce_scatter_sum(self, buffer: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, buffer.reshape(-1))


def _check_buffer(buffer: np.ndarray, where: str) -> None:
    if not isinstance(buffer, np.ndarray):
        raise TypeError(f"{where}: expected a numpy array, got {type(buffer).__name__}")
    if not buffer.flags.c_contiguous or not buffer.flags.writeable:
        raise ValueError(f"{where}: the buffer must be a writeable C-contiguous numpy array "
                         f"(shape {buffer.shape}, strides {buffer.strides})")


def _output(out: np.ndarray | None, size: int, dtype: np.dtype, where: str, name: str) -> np.ndarray:
    if out is None:
        return np.empty(size, dtype)
    _check_buffer(out, where)
    if out.size != size or out.dtype != dtype:
        raise ValueError(f"{where}: {name} must hold {size} elements of {dtype}, got {out.size} of {out.dtype}")
    return out.reshape(-1)


def _check_op(op: str, buffer: np.ndarray, where: str) -> None:
    if op not in OPS:
        raise ValueError(f"{where}: op must be one of {OPS}, got {op!r}")
    if op == "average" and buffer.dtype.kind != "f":
        raise TypeError(f"{where}: op='average' needs a float buffer, got {buffer.dtype} (use op='sum')")
