"""Adadelta's running averages of squared gradients and squared updates."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import sqrt
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByAdadelta(Transform):
    """Adadelta's direction (Zeiler, 2012), torch's formula:

    1. ``s <- rho * s + (1 - rho) * g * g``                    (slot ``square_avg``)
    2. ``u <- sqrt(d + eps) / sqrt(s + eps) * g``
    3. ``d <- rho * d + (1 - rho) * u * u``                    (slot ``acc_delta``)
    """

    slots = ("square_avg", "acc_delta")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        rho, eps = ctx.hyper("rho"), ctx.hyper("eps")
        result = []
        for i, g in enumerate(updates):
            s = ctx.accumulate(i, "square_avg", rho, ((1.0 - rho) * g) * g)
            u = sqrt(ctx.state(i, "acc_delta") + eps) / sqrt(s + eps) * g
            ctx.accumulate(i, "acc_delta", rho, ((1.0 - rho) * u) * u)
            result.append(u)
        return result
