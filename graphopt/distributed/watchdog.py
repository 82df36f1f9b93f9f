"""`Watchdog`: a per-operation timeout for an engine that has none of its own (MPI).

MPI collectives block until every process has joined; a peer that froze (a deadlock, a stuck
filesystem, a process stopped by a debugger) or died without the launcher noticing leaves the others
waiting forever. The communicator registers each collective as it starts (`enter`: operation, bytes,
start time) and clears it as it ends (`leave`): two attribute stores, no lock, no thread started per
call. One daemon thread, started with the watchdog, wakes every ``poll`` seconds (a tenth of the
timeout, at most 1 s) and, once the registered operation has run longer than ``timeout``, calls
`report` and then ``on_timeout`` (the MPI engine's: ``MPI_Abort``, which makes the launcher end
every process of the job, the frozen one included).

The thread runs while the engine waits because mpi4py releases the GIL inside blocking MPI calls.
Before acting it waits ``grace`` seconds (1 s), so that every other process waiting in the same
collective reports too: the rank that printed nothing is the one to look at.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Callable

from graphopt.distributed.communicator import checked_timeout


class Watchdog:
    """Watches one communicator's collectives; ``on_timeout(message)`` ends the job (must not return)."""

    def __init__(self, timeout: float, where: str, on_timeout: Callable[[str], None], poll: float | None = None):
        self.timeout = checked_timeout(timeout, "Watchdog")
        if self.timeout is None:
            raise ValueError("Watchdog: timeout must be a positive number of seconds, got None")
        self.where = where
        self.poll = min(1.0, self.timeout / 10) if poll is None else poll
        self.grace = 1.0
        self.count = 0  # collectives entered so far: the same sequence number on every process
        self._on_timeout = on_timeout
        self._pending: tuple[str, int, float, int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="graphopt-watchdog", daemon=True)
        self._thread.start()

    def enter(self, operation: str, nbytes: int) -> None:
        """Register the collective this thread is about to run."""
        self.count += 1
        self._pending = (operation, nbytes, time.monotonic(), self.count, threading.get_ident())

    def leave(self) -> None:
        """The registered collective has returned (or raised)."""
        self._pending = None

    def close(self) -> None:
        """Stop watching (the thread ends within ``poll`` seconds)."""
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            pending = self._pending
            if pending is None or time.monotonic() - pending[2] <= self.timeout:
                continue
            message = self.report(pending)
            _write(message)
            if self._stop.wait(self.grace):
                return
            if self._pending is not pending:  # it returned during the grace period: a slow peer after all
                _write(f"graphopt.distributed watchdog: {self.where}: collective #{pending[3]} returned after all; "
                       "not aborting\n")
                continue
            self._on_timeout(message)
            return

    def report(self, pending: tuple[str, int, float, int, int]) -> str:
        """What timed out, where, and the likely cause, with the waiting thread's stack."""
        operation, nbytes, start, count, thread = pending
        frame = sys._current_frames().get(thread)  # noqa: SLF001 - the stack of the thread that waits
        stack = "".join(traceback.format_stack(frame)[-6:]) if frame is not None else ""
        return (f"\ngraphopt.distributed watchdog: {self.where}: {operation} of {nbytes} bytes (collective "
                f"#{count} of this process) has waited {time.monotonic() - start:.1f} s, more than the timeout of "
                f"{self.timeout:g} s. A peer is probably frozen or dead: every process must call the same "
                f"collectives in the same order, and one of them never joined this one (the rank that reports "
                f"nothing is the likely culprit). If a peer is only slow (rank 0 writing a checkpoint, a long "
                f"first compile), raise the timeout: graphopt.distributed.init(timeout=seconds). Aborting the "
                f"job.\n{stack}")


def _write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
