"""RMSprop's running average of squared gradients, centered and with momentum."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import isinf, sqrt, where
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByRms(Transform):
    """RMSprop's direction (Hinton), torch's formula:

    1. ``s <- alpha * s + (1 - alpha) * g * g``               (slot ``square_avg``)
    2. if ``centered``: ``a <- alpha * a + (1 - alpha) * g``   (slot ``grad_avg``),
       ``d <- sqrt(s - a * a) + eps``, where ``s - a * a`` is ``s`` itself when ``s`` is infinite
       (torch's fused multiply-add gives ``inf - a * a = inf`` even when ``a * a`` overflows;
       two plain ops would give ``inf - inf = NaN``); else ``d <- sqrt(s) + eps``
    3. if ``momentum``: ``b <- momentum * b + g / d`` and ``u <- b`` (slot ``momentum_buffer``);
       else ``u <- g / d``
    """

    centered: bool = False
    momentum: bool = False

    def all_slots(self) -> tuple[str, ...]:
        return ("square_avg",) + (("grad_avg",) if self.centered else ()) + (
            ("momentum_buffer",) if self.momentum else ())

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        alpha, eps = ctx.hyper("alpha"), ctx.hyper("eps")
        result = []
        for i, g in enumerate(updates):
            s = ctx.accumulate(i, "square_avg", alpha, ((1.0 - alpha) * g) * g)  # torch's order: finite longer
            if self.centered:
                a = ctx.accumulate(i, "grad_avg", alpha, (1.0 - alpha) * g)
                s = where(isinf(s), s, s - a * a)
            u = g / (sqrt(s) + eps)
            if self.momentum:
                u = ctx.accumulate(i, "momentum_buffer", ctx.hyper("momentum"), u)
            result.append(u)
        return result
