"""Adamax: Adam's first moment over an exponentially weighted infinity norm."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import maximum
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByAdamax(Transform):
    """Adamax's direction (Kingma & Ba, 2014, section 7), torch's formula, ``t`` the step count:

    1. ``m <- beta1 * m + (1 - beta1) * g``                    (slot ``exp_avg``)
    2. ``n <- max(beta2 * n, |g| + eps)``                      (slot ``exp_inf``)
    3. ``u <- m / n / (1 - beta1 ** t)``
    """

    slots = ("exp_avg", "exp_inf")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        beta1, beta2, eps = ctx.hyper("beta1"), ctx.hyper("beta2"), ctx.hyper("eps")
        result = []
        for i, g in enumerate(updates):
            m = ctx.accumulate(i, "exp_avg", beta1, (1.0 - beta1) * g)
            norm = maximum(beta2 * ctx.state(i, "exp_inf"), abs(g) + eps)
            ctx.set_state(i, "exp_inf", norm)
            result.append(m / norm * (1.0 / (1.0 - beta1 ** ctx.step(i))))
        return result
