"""RAdam: Adam whose adaptive step is switched on, and rectified, once its variance is tractable."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import sqrt, where
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByRAdam(Transform):
    """RAdam's direction (Liu et al., 2020), torch's formula, ``t`` the tensor's step count:

    1. ``m <- beta1 * m + (1 - beta1) * g``                    (slot ``exp_avg``)
    2. ``v <- beta2 * v + (1 - beta2) * g * g``                (slot ``exp_avg_sq``)
    3. ``rho_inf = 2 / (1 - beta2) - 1``, ``rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)``
    4. if ``rho_t > 5``: ``r = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))``
       and ``u <- m / (1 - beta1 ** t) * r * sqrt(1 - beta2 ** t) / (sqrt(v) + eps)``;
       else ``u <- m / (1 - beta1 ** t)``

    The switch depends on ``t`` only: it is a scalar ``Where`` (the denominator is
    ``sqrt(v) + eps`` or 1, the factor ``r * sqrt(1 - beta2 ** t)`` or 1), so one graph
    serves both phases and the discarded branch never reaches a tensor.
    """

    slots = ("exp_avg", "exp_avg_sq")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        beta1, beta2, eps = ctx.hyper("beta1"), ctx.hyper("beta2"), ctx.hyper("eps")
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        result = []
        for i, g in enumerate(updates):
            t = ctx.step(i)
            m = ctx.accumulate(i, "exp_avg", beta1, (1.0 - beta1) * g)
            v = ctx.accumulate(i, "exp_avg_sq", beta2, ((1.0 - beta2) * g) * g)
            correction2 = 1.0 - beta2 ** t
            rho_t = rho_inf - 2.0 * t * beta2 ** t / correction2
            rectified = rho_t > 5.0
            rectifier = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            factor = where(rectified, rectifier * sqrt(correction2), 1.0) / (1.0 - beta1 ** t)
            result.append(m / where(rectified, sqrt(v) + eps, 1.0) * factor)
        return result
