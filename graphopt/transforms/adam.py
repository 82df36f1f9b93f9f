"""Adam's moment estimates with bias correction, and AMSGrad."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import maximum, sqrt
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByAdam(Transform):
    """Adam's direction (Kingma & Ba), torch's formula, ``t`` the tensor's step count:

    1. ``m <- beta1 * m + (1 - beta1) * g``                 (slot ``exp_avg``)
    2. ``v <- beta2 * v + (1 - beta2) * g * g``             (slot ``exp_avg_sq``)
    3. if ``amsgrad``: ``v_max <- max(v_max, v)``, and ``v_max`` replaces ``v`` below
       (slot ``max_exp_avg_sq``)
    4. ``u <- (m / (1 - beta1 ** t)) / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)``, computed as
       ``u <- (sqrt(c2) / c1) * m / (sqrt(v) + eps * sqrt(c2))`` with ``c1 = 1 - beta1 ** t``,
       ``c2 = 1 - beta2 ** t``: equal in exact arithmetic, and one pass fewer since the
       corrections are scalars.
    """

    amsgrad: bool = False

    def all_slots(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        beta1, beta2, eps = ctx.hyper("beta1"), ctx.hyper("beta2"), ctx.hyper("eps")
        result = []
        for i, g in enumerate(updates):
            t = ctx.step(i)
            m = ctx.accumulate(i, "exp_avg", beta1, (1.0 - beta1) * g)
            v = ctx.accumulate(i, "exp_avg_sq", beta2, ((1.0 - beta2) * g) * g)  # torch's order: finite longer
            if self.amsgrad:
                v = maximum(ctx.state(i, "max_exp_avg_sq"), v)
                ctx.set_state(i, "max_exp_avg_sq", v)
            root_c2 = sqrt(1.0 - beta2 ** t)
            result.append(m / (sqrt(v) + eps * root_c2) * (root_c2 / (1.0 - beta1 ** t)))
        return result
