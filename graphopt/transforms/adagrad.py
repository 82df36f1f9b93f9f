"""Adagrad's accumulated squared gradients, with torch's initial value and learning-rate decay."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import sqrt, where
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByAdagrad(Transform):
    """Adagrad's direction (Duchi et al., 2011), torch's formula, ``t`` the tensor's step count:

    1. ``s <- initial_accumulator_value`` when ``t = 1`` (only if ``initial``: slots start as
       zeros, so the initial value is chosen from the step count, a scalar condition)
    2. ``s <- s + g * g``                                      (slot ``sum``)
    3. ``u <- g / (sqrt(s) + eps) / (1 + (t - 1) * lr_decay)``; the divisor is a scalar, so
       it folds into the learning rate that follows.
    """

    initial: bool = False
    slots = ("sum",)

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        eps, lr_decay = ctx.hyper("eps"), ctx.hyper("lr_decay")
        result = []
        for i, g in enumerate(updates):
            t = ctx.step(i)
            s = ctx.state(i, "sum")
            if self.initial:
                s = where(t > 1.0, s, ctx.hyper("initial_accumulator_value"))
            s = s + g * g
            ctx.set_state(i, "sum", s)
            result.append(g / (sqrt(s) + eps) * (1.0 / (1.0 + (t - 1.0) * lr_decay)))
        return result
