"""Lion: the sign of an interpolation between momentum and gradient."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import sign
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByLion(Transform):
    """Lion's direction (Chen et al., 2023, Algorithm 2):

    1. ``u <- sign(beta1 * m + (1 - beta1) * g)``
    2. ``m <- beta2 * m + (1 - beta2) * g``                    (slot ``exp_avg``)
    """

    slots = ("exp_avg",)

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        beta1, beta2 = ctx.hyper("beta1"), ctx.hyper("beta2")
        result = []
        for i, g in enumerate(updates):
            m = ctx.state(i, "exp_avg")
            result.append(sign(beta1 * m + (1.0 - beta1) * g))
            ctx.accumulate(i, "exp_avg", beta2, (1.0 - beta2) * g)
        return result
