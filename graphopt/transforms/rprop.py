"""Rprop: per-element step sizes adapted by the sign agreement of successive gradients."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import cast, clip, sign, where
from graphopt.transforms.base import Context, Transform, Updates
from graphopt.transforms.learning_rate import effective_lr


@dataclass(frozen=True)
class RpropStep(Transform):
    """Resilient backpropagation (Riedmiller & Braun, 1993), torch's formula; it returns the
    parameter step itself (no learning-rate transform follows):

    1. ``d <- lr * lr_mult`` when ``t = 1`` (slots start as zeros; chosen from the step count)
    2. ``x = g * prev``; ``d <- clip(d * f, step_size_min, step_size_max)`` with ``f = etaplus``
       where ``x > 0``, ``etaminus`` where ``x < 0``, else 1          (slot ``step_size``)
    3. ``g <- 0`` where ``x < 0`` (the sign flipped: no step, and no flip seen next time)
    4. ``prev <- g``                                                  (slot ``prev``)
    5. ``u <- -sign(g) * d``
    """

    slots = ("prev", "step_size")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        etaminus, etaplus = ctx.hyper("etaminus"), ctx.hyper("etaplus")
        low, high = ctx.hyper("step_size_min"), ctx.hyper("step_size_max")
        initial = effective_lr(ctx)
        result = []
        for i, g in enumerate(updates):
            size = where(ctx.step(i) > 1.0, ctx.state(i, "step_size"), initial)
            agreement = g * ctx.state(i, "prev")
            flipped = agreement < 0.0
            # the factors in g's dtype (as torch holds them), so the tensor of factors is too
            factor = where(agreement > 0.0, cast(etaplus, g.dtype), where(flipped, cast(etaminus, g.dtype), 1.0))
            size = clip(size * factor, low, high)
            g = where(flipped, 0.0, g)
            ctx.set_state(i, "step_size", size)
            ctx.set_state(i, "prev", g)
            result.append(-(sign(g) * size))
        return result
