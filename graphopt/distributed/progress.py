"""`Progress`: one thread that runs a communicator's started collectives, in the order they were started.

`Communicator.start` hands it work (an allreduce of a bucket of gradients, with what goes around it) and
returns a `Request` at once; the caller goes on computing (the next stage of the backward pass) while this
thread waits in the engine, which releases the GIL (mpi4py, torch.distributed). Every process starts the same
collectives in the same order, and one thread runs them one after another, so they meet in the same order
everywhere; a blocking collective first waits until the started ones have run (`drain`).

After a failure (a `CommunicationError`: a peer died or froze) nothing more runs: the requests still queued,
and every later one, fail with that error, since peers would no longer meet this process's collectives in
order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Request:
    """Work started on the progress thread: `wait` returns once it ran (raising its error, if any)."""

    def __init__(self):
        self._done = threading.Event()
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        """Block until the work ran; raise the exception it raised (or the earlier failure that stopped it)."""
        self._done.wait()
        if self._error is not None:
            raise self._error

    def _finish(self, error: BaseException | None = None) -> None:
        self._error = error
        self._done.set()

    @classmethod
    def completed(cls) -> Request:
        """A request with nothing left to do (a world of one process)."""
        request = cls()
        request._finish()
        return request


class Progress:
    """The thread and its queue; ``name`` names the thread (in stacks, and the watchdog's reports)."""

    def __init__(self, name: str):
        self.failure: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def on_thread(self) -> bool:
        """Whether the caller is the progress thread itself."""
        return threading.current_thread() is self._thread

    def submit(self, work: Callable[[], None]) -> Request:
        """Queue ``work`` after everything submitted before; its `Request`."""
        request = Request()
        with self._idle:
            self._pending += 1
        self._queue.put((request, work))
        return request

    def drain(self) -> None:
        """Wait until everything submitted so far has run (without raising: each request's `wait` does)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        """Stop the thread once the queue is empty."""
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            request, work = item
            error = self.failure
            if error is None:
                try:
                    work()
                except BaseException as raised:  # noqa: BLE001 - handed to the request's waiter
                    error = self.failure = raised
            request._finish(error)  # noqa: SLF001
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
