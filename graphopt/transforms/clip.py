"""Gradient clipping: by value, and by L2 norm over the group or per tensor."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import clip, maximum, sqrt
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ClipByValue(Transform):
    """``u <- min(max(u, -clip_value), clip_value)`` elementwise."""

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        bound = ctx.hyper("clip_value")
        return [clip(u, -bound, bound) for u in updates]


@dataclass(frozen=True)
class ClipByNorm(Transform):
    """Rescale updates whose L2 norm exceeds ``clip_norm``.

    ``norm = sqrt(sum(u ** 2))``, over all tensors of the group (default) or over each
    tensor on its own (``per_tensor=True``, as Dragon does), then
    ``u <- u * clip_norm / max(norm, clip_norm)``. Norms accumulate in float64.
    """

    per_tensor: bool = False

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        limit = ctx.hyper("clip_norm")
        if self.per_tensor:
            return [u * (limit / maximum(sqrt(ctx.tensor_sum_of_squares(u)), limit)) for u in updates]
        factor = limit / maximum(sqrt(ctx.sum_of_squares(updates)), limit)
        return [u * factor for u in updates]
