"""The non-finite guard of an update model, and torch's dynamic loss scale (GradScaler).

A guarded update (`build_update(..., guard=Guard(...))`) decides inside the graph whether
the step happens. In the order applied:

1. with ``loss_scale``: ``g <- g * inv_scale``, ``inv_scale = float32(1 / float64(scale))``
   for every gradient (``scale`` is the input ``grad_scaler.scale``: the loss was multiplied
   by it before differentiation), as ``torch.amp.GradScaler.unscale_`` does;
2. ``found_inf <- any element of any gradient is NaN or inf``, per tensor
   ``isnan(sum(g - g))`` (``inf - inf`` and ``NaN - NaN`` are NaN, every finite ``g - g`` is 0,
   so the sum is exact) and ``or`` over the tensors;
3. every output ``p.new``, ``p.<slot>.new``, ``p.step.new`` is its input where ``found_inf``:
   a skipped step changes no parameter, no state, no step count;
4. with ``loss_scale``, torch's ``_amp_update_scale_``: where ``found_inf``,
   ``scale <- scale * backoff_factor`` and ``tracker <- 0``; else ``tracker <- tracker + 1``,
   and when it reaches ``growth_interval``, ``scale <- scale * growth_factor`` (if that is
   finite) and ``tracker <- 0``.

Outputs: ``found_inf`` (bool scalar) and, with ``loss_scale``, ``grad_scaler.scale.new`` and
``grad_scaler.growth_tracker.new``; inputs ``grad_scaler.scale`` (float32),
``grad_scaler.growth_tracker`` (int64) and the float64 settings ``grad_scaler.growth_factor``,
``grad_scaler.backoff_factor``, ``grad_scaler.growth_interval`` (`graphopt.names`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from graphopt import names
from graphopt.symbolic import Graph, Sym, cast, isinf, where
from graphopt.symbolic.dtypes import SCALAR_DTYPE

SCALE, TRACKER = names.grad_scaler("scale"), names.grad_scaler("growth_tracker")
SETTINGS = ("growth_factor", "backoff_factor", "growth_interval")


@dataclass(frozen=True)
class Guard:
    """Skip the whole update when a gradient is not finite; ``loss_scale``: unscale the gradients
    by the dynamic loss scale first, and update it (see the module docstring)."""

    loss_scale: bool = False


class GuardEmitter:
    """Emits a guard into an update graph: `unscale` the gradients, then `found` over them."""

    def __init__(self, graph: Graph, guard: Guard):
        self.graph, self.guard = graph, guard
        self.scale = graph.input(SCALE, np.float32, ()) if guard.loss_scale else None
        self._inv_scale = None if self.scale is None else cast(1.0 / cast(self.scale, SCALAR_DTYPE), np.float32)
        self._flags: list[Sym] = []

    def unscale(self, grads: Sequence[Sym]) -> list[Sym]:
        """Step 1 (only with a loss scale), then each gradient's non-finite flag recorded for `found`."""
        if self._inv_scale is not None:
            grads = [g * cast(self._inv_scale, g.dtype) for g in grads]
        for g in grads:
            total = self.graph.op("ReduceSum", [g - g], dtype=g.dtype, shape=(), attributes={"keepdims": 0})
            self._flags.append(_isnan(total))
        return list(grads)

    def found(self) -> Sym:
        """Step 2: whether any gradient seen by `unscale` has a NaN or inf (False if none was)."""
        flags = self._flags or [self.graph.constant(np.array(False))]
        result = flags[0]
        for flag in flags[1:]:
            result = self.graph.op("Or", [result, flag], dtype=np.dtype(bool), shape=())
        return result

    def finish(self, found: Sym) -> None:
        """Step 4 and the outputs: ``found_inf`` and the loss scale's new state."""
        self.graph.output(names.FOUND_INF, found)
        if self.scale is None:
            return
        graph = self.graph
        tracker = graph.input(TRACKER, np.int64, ())
        growth, backoff, interval = (graph.input(names.grad_scaler(k), np.float64, (), weak=True) for k in SETTINGS)
        successful = cast(tracker, SCALAR_DTYPE) + 1.0
        grows = successful >= interval
        grown = cast(cast(self.scale, SCALAR_DTYPE) * growth, np.float32)
        grown = where(isinf(grown), self.scale, grown)  # torch keeps the scale when growing overflows
        kept = where(grows, grown, self.scale)
        scale = where(found, cast(cast(self.scale, SCALAR_DTYPE) * backoff, np.float32), kept)
        zero = graph.constant(np.array(0, np.int64), np.int64)
        counted = where(grows, zero, cast(successful, np.int64))
        graph.output(names.new(SCALE), scale)
        graph.output(names.new(TRACKER), where(found, zero, counted))


def _isnan(x: Sym) -> Sym:
    return x.graph.op("IsNaN", [x], dtype=np.dtype(bool), shape=x.shape)


def nonfinite_check_model(dtype: np.dtype) -> onnx.ModelProto:
    """``found_inf = isnan(sum(x - x))`` over a 1-D ``x`` of any length: whether any element of
    ``x`` is NaN or inf. What a guarded optimizer runs over its gradients before a step."""
    graph = Graph("graphopt_nonfinite_check")
    x = graph.input("x", dtype, ("n",))
    emitter = GuardEmitter(graph, Guard())
    emitter.unscale([x])
    graph.output(names.FOUND_INF, emitter.found())
    return graph.to_model()
