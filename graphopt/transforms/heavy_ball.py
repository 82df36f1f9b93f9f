"""Plain heavy-ball momentum, without dampening or a first-step case (Dragon's LARS)."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class HeavyBall(Transform):
    """``b <- momentum * b + u``; ``u <- b`` (slot ``momentum_buffer``, starting at zeros)."""

    slots = ("momentum_buffer",)

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        momentum = ctx.hyper("momentum")
        return [ctx.accumulate(i, "momentum_buffer", momentum, u) for i, u in enumerate(updates)]
