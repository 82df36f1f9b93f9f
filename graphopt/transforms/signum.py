"""Signum: the sign of a momentum average (signSGD when there is no momentum)."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import sign
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleBySignum(Transform):
    """Signum's direction (Bernstein et al., 2018, Algorithm 3; signSGD, Algorithm 1, without momentum):

    1. if ``momentum``: ``m <- momentum * m + (1 - momentum) * g`` (slot ``momentum_buffer``)
       and ``u <- sign(m)``; else ``u <- sign(g)``
    """

    momentum: bool = True

    def all_slots(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        if not self.momentum:
            return [sign(g) for g in updates]
        momentum = ctx.hyper("momentum")
        return [sign(ctx.accumulate(i, "momentum_buffer", momentum, (1.0 - momentum) * g))
                for i, g in enumerate(updates)]
