"""`Communicator`: the collectives graphopt needs, on flat numpy buffers, whatever the engine.

Every method works in place on (or fills) C-contiguous numpy arrays and is collective: every
process calls it, in the same order, with buffers of the same size and dtype. The engines
(`graphopt.distributed.mpi`, `graphopt.distributed.torch_engine`) do the communication;
graphopt writes no networking of its own.

Faults: every collective runs through `Communicator._collective`, which turns the engine's own
failure (gloo's ``RuntimeError`` on a reset connection or a timeout, an ``MPI.Exception``) into a
`CommunicationError` naming the operation, its size, the rank, the world size, the engine and the
cause, and registers the operation with the engine's `graphopt.distributed.watchdog.Watchdog` when
it has one (MPI: the engine offers no timeout of its own).

Overlap: `start` runs work around collectives (`allreduce_async`: an allreduce) on the communicator's progress
thread (`graphopt.distributed.progress`) and returns a `Request` at once; collectives, started or blocking, run
in the order they were called, since a blocking one first waits for those started before it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from graphopt.distributed.progress import Progress, Request

OPS = ("sum", "average")
_PROGRESS_LOCK = threading.Lock()
TIMEOUT = 600.0
"""Default seconds a collective may wait for its peers before the job is ended (both engines). A wait
inside a collective includes every imbalance between processes: a first step's compilation, rank 0
writing a checkpoint or evaluating while the others wait at the next collective. A false alarm kills a
healthy job, a late one costs at most this long once, so the default is generous (torch's own: 30 min
for gloo, 10 min for NCCL); lower it where steps are short and nothing runs on one rank alone."""


def checked_timeout(timeout: float | None, where: str) -> float | None:
    """``timeout`` as float seconds (or None), refusing what is not a positive number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{where}: timeout must be a positive number of seconds, or None, got {timeout!r}")
    return float(timeout)


class CommunicationError(RuntimeError):
    """A collective failed in the engine (a peer died, froze past the timeout, or the engine refused
    the call): raised on every process that sees it, naming the operation, rank, world and cause."""

    def __init__(self, operation: str, nbytes: int, communicator: Communicator, cause: BaseException):
        self.operation, self.nbytes, self.cause = operation, nbytes, cause
        self.rank, self.world_size, self.engine = communicator.rank, communicator.world_size, communicator.engine
        text = f"{type(cause).__name__}: {str(cause).strip()}"
        super().__init__(f"graphopt.distributed: {operation} of {nbytes} bytes failed on rank {self.rank} of "
                         f"{self.world_size} ({self.engine}): {text}. {_likely_cause(text)}")


_LOST = ("closed", "reset", "broken pipe", "connection", "process failed", "proc_failed")


def _likely_cause(text: str) -> str:
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return ("A peer did not join within the timeout: it is probably frozen (or much slower; raise "
                "graphopt.distributed.init(timeout=seconds)).")
    if any(word in lowered for word in _LOST):
        return "A peer's connection was lost: it probably died. Restart the job from its last checkpoint."
    return "Every process must call the same collectives in the same order, with buffers of the same size and dtype."


class Communicator:
    """The interface: ``rank``, ``world_size`` and five collectives. Engines override the
    ``_allreduce_sum`` / ``_broadcast`` / ``_allgather`` / ``_barrier`` primitives (and may override
    ``_reduce_scatter_sum`` and ``_reduce_scatter_counts``) and set ``_failures``; the checks, ``average``,
    error translation and the watchdog's registration are shared."""

    engine = "abstract"
    rank: int = 0
    world_size: int = 1
    _failures: tuple[type[BaseException], ...] = ()  # the engine's own exceptions, raised as CommunicationError
    _watchdog = None  # a graphopt.distributed.watchdog.Watchdog, for an engine without its own timeout
    _progress: Progress | None = None  # the thread running started work, made by the first `start`

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        """Replace ``buffer`` by the element-wise sum (or ``"average"``: sum / world size) of every
        process's ``buffer``; returns it."""
        _check_buffer(buffer, "allreduce")
        _check_op(op, buffer, "allreduce")
        if self.world_size > 1 and buffer.size:
            self._collective("allreduce", buffer.nbytes, self._allreduce_sum, buffer)
        if op == "average" and self.world_size > 1:
            buffer *= buffer.dtype.type(1 / self.world_size)
        return buffer

    def reduce_scatter(self, buffer: np.ndarray, op: str = "sum", out: np.ndarray | None = None,
                       counts: list[int] | None = None) -> np.ndarray:
        """This process's shard (``rank``-th of ``world_size`` equal parts) of the reduction of every
        process's ``buffer``; ``buffer`` itself is left as the engine leaves it (use a copy to keep it).
        ``counts``: the parts' sizes instead, rank by rank (the same on every process, summing to the
        buffer's size; a part may be empty), as MPI_Reduce_scatter takes them."""
        _check_buffer(buffer, "reduce_scatter")
        _check_op(op, buffer, "reduce_scatter")
        if counts is None:
            if buffer.size % self.world_size:
                raise ValueError(f"reduce_scatter: buffer of {buffer.size} elements does not split into "
                                 f"{self.world_size} equal shards; pad it to a multiple of the world size")
            out = _output(out, buffer.size // self.world_size, buffer.dtype, "reduce_scatter", "out")
            self._collective("reduce_scatter", buffer.nbytes, self._reduce_scatter_sum, buffer, out)
        else:
            counts = _checked_counts(counts, buffer, self.world_size)
            out = _output(out, counts[self.rank], buffer.dtype, "reduce_scatter", "out")
            self._collective("reduce_scatter", buffer.nbytes, self._reduce_scatter_counts, buffer, counts, out)
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
            self._collective("allgather", out.nbytes, self._allgather, shard, out)
        return out

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """Replace ``buffer`` on every process by ``root``'s; returns it."""
        _check_buffer(buffer, "broadcast")
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast: root {root} is not a rank of this world of {self.world_size}")
        if self.world_size > 1 and buffer.size:
            self._collective("broadcast", buffer.nbytes, self._broadcast, buffer, root)
        return buffer

    def start(self, work: Callable[[], None]) -> Request:
        """Run ``work`` (collectives of this communicator, and what goes around them) on the progress
        thread, after everything started before, and return at once; the `Request`'s ``wait`` returns once it
        ran, raising what it raised. Every process must start the same collectives in the same order, and
        must not touch their buffers before ``wait``. A world of one process runs ``work`` here, now."""
        if self.world_size == 1:
            work()
            return Request.completed()
        if self._progress is None:
            with _PROGRESS_LOCK:
                if self._progress is None:
                    self._progress = Progress(f"graphopt-{self.engine}-progress")
        return self._progress.submit(work)

    def allreduce_async(self, buffer: np.ndarray, op: str = "sum") -> Request:
        """`allreduce` of ``buffer``, started (see `start`): ``buffer`` holds the result once ``wait`` returns."""
        _check_buffer(buffer, "allreduce_async")
        _check_op(op, buffer, "allreduce_async")
        return self.start(lambda: self.allreduce(buffer, op))

    def barrier(self) -> None:
        """Return once every process has called it."""
        if self.world_size > 1:
            self._collective("barrier", 0, self._barrier)

    def close(self) -> None:
        """Stop the progress thread and the watchdog, if any (the engine's own resources are released by its
        ``close``)."""
        if self._progress is not None:
            self._progress.close()
        if self._watchdog is not None:
            self._watchdog.close()

    def _collective(self, operation: str, nbytes: int, primitive, *args) -> None:
        """``primitive(*args)``, after the started work (`start`), registered with the watchdog; the engine's
        failure as `CommunicationError`, as is an earlier started collective's (then nothing runs)."""
        progress = self._progress
        if progress is not None and not progress.on_thread:
            progress.drain()
            if progress.failure is not None:
                raise CommunicationError(operation, nbytes, self, progress.failure)
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.enter(operation, nbytes)
        try:
            primitive(*args)
        except self._failures as error:
            raise CommunicationError(operation, nbytes, self, error) from error
        finally:
            if watchdog is not None:
                watchdog.leave()

    def _barrier(self) -> None:  # pragma: no cover - engines override
        raise NotImplementedError

    def _allreduce_sum(self, buffer: np.ndarray) -> None:  # pragma: no cover - engines override
        raise NotImplementedError

    def _reduce_scatter_sum(self, buffer: np.ndarray, out: np.ndarray) -> None:
        """Default: a full allreduce, then this rank's part (engines with a native one override)."""
        self._allreduce_sum(buffer)
        np.copyto(out, buffer.reshape(-1)[self.rank * out.size:(self.rank + 1) * out.size])

    def _reduce_scatter_counts(self, buffer: np.ndarray, counts: list[int], out: np.ndarray) -> None:
        """Default: a full allreduce, then this rank's part (MPI overrides with MPI_Reduce_scatter)."""
        self._allreduce_sum(buffer)
        start = sum(counts[:self.rank])
        np.copyto(out, buffer.reshape(-1)[start:start + out.size])

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

    def _reduce_scatter_counts(self, buffer: np.ndarray, counts: list[int], out: np.ndarray) -> None:
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


def _checked_counts(counts, buffer: np.ndarray, world_size: int) -> list[int]:
    counts = list(counts)
    if len(counts) != world_size or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0
                                        for c in counts) or sum(counts) != buffer.size:
        raise ValueError(f"reduce_scatter: counts must be {world_size} sizes >= 0, one per rank, summing to the "
                         f"buffer's {buffer.size} elements; got {counts}")
    return [int(c) for c in counts]


def _check_op(op: str, buffer: np.ndarray, where: str) -> None:
    if op not in OPS:
        raise ValueError(f"{where}: op must be one of {OPS}, got {op!r}")
    if op == "average" and buffer.dtype.kind != "f":
        raise TypeError(f"{where}: op='average' needs a float buffer, got {buffer.dtype} (use op='sum')")
