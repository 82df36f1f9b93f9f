"""`serialized`: one object's public methods run one at a time, from any number of threads.

An optimizer's step updates flat buffers in place and then advances step counts; a
second thread's step, ``zero_grad`` or ``state_dict`` in between would read or write
half-updated parameters and state. Each optimizer therefore holds a re-entrant lock
(``_lock``, a `threading.RLock`) that its public methods take; a `Trainer` takes its
optimizer's, since its steps write the same buffers. Re-entrant, so that one method may
call another (a Trainer's step calls its optimizer's).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

Method = TypeVar("Method", bound=Callable[..., Any])


def serialized(method: Method) -> Method:
    """``method`` run while holding ``self._lock``."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]
