"""`RowParallel`: one session run over row ranges of the same buffers by several threads.

ONNX Runtime's CPU provider runs a graph one node at a time; an update over many
rows is faster when each thread runs the whole graph over its own range of rows
(``run_with_iobinding`` releases the GIL). Bindings are made once per set of buffers:
inputs are bound zero-copy, so a caller updates scalar inputs by writing into the
bound 0-d arrays, and a run then costs one call per thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np
import onnxruntime as ort

from graphopt.runtime.buffer import bind_input, bind_output
from graphopt.runtime.session import Executable

_pool: ThreadPoolExecutor | None = None


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="graphopt")
    return _pool


def row_ranges(rows: int, parts: int) -> list[slice]:
    """``rows`` split into at most ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, rows))
    bounds = [round(rows * k / parts) for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


class RowParallel:
    """Run ``executable`` over row ranges of ``rows`` buffers, one binding per range.

    ``rows``: arrays (or `Region` s) whose first axis is split between threads,
    inputs and outputs alike (an output may be the same array as an input, if proven
    safe). ``scalars``: arrays bound whole to every range. ``results``: outputs that
    each range writes on its own (a partial sum), given as one array per range.
    """

    def __init__(self, executable: Executable, rows: Mapping[str, np.ndarray], scalars: Mapping[str, np.ndarray],
                 threads: int, results: Mapping[str, list[np.ndarray]] | None = None):
        self.executable = executable
        count = {a.shape[0] for a in rows.values()}
        if len(count) != 1:
            raise ValueError(f"row buffers have different numbers of rows: {sorted(count)}")
        self.ranges = self.ranges_for(count.pop(), threads)
        # Bindings hold raw pointers: every array bound must live as long as they do.
        self._bound = (dict(rows), dict(scalars), {k: list(v) for k, v in (results or {}).items()})
        self.bindings = [self._bind(*self._bound, k, r) for k, r in enumerate(self.ranges)]

    @staticmethod
    def ranges_for(rows: int, threads: int) -> list[slice]:
        return row_ranges(rows, threads)

    def _bind(self, rows, scalars, results, k: int, span: slice) -> ort.IOBinding:
        binding = self.executable.session.io_binding()
        for name in self.executable.input_names:
            bind_input(binding, name, self._range(rows, name, span) if name in rows else scalars[name])
        for name in self.executable.output_names:
            bind_output(binding, name, results[name][k] if name in results else self._range(rows, name, span))
        return binding

    def _range(self, rows, name: str, span: slice):
        """Rows ``span`` of buffer ``name``, flattened where the model takes it as one dimension (a fused
        kernel's ``[n]`` buffers; the standard update's are ``[rows, 1, K]``)."""
        view = rows[name][span]
        arg = self.executable.inputs.get(name) or self.executable.outputs.get(name)
        return view.reshape(-1) if arg is not None and len(arg.shape) == 1 else view

    def run(self) -> None:
        """Run every range, the last one on the calling thread; re-raise the first error."""
        session = self.executable.session
        pending = [_shared_pool().submit(session.run_with_iobinding, b) for b in self.bindings[:-1]]
        error = None
        try:
            session.run_with_iobinding(self.bindings[-1])
        except Exception as exc:  # noqa: BLE001 - waited for the others below, then re-raised
            error = exc
        for future in pending:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001
                error = error or exc
        if error is not None:
            raise error
