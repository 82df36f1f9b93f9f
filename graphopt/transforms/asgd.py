"""Averaged SGD: a decaying step size and a running average of the iterates."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from graphopt.symbolic import maximum, where
from graphopt.transforms.base import Context, Transform, Updates
from graphopt.transforms.learning_rate import effective_lr


@dataclass(frozen=True)
class AveragedSgd(Transform):
    """ASGD (Polyak & Juditsky, 1992), torch's formula, ``t`` the tensor's step count and
    ``lr`` meaning ``lr * lr_mult``:

    1. ``eta`` is the scalar slot ``eta``, or ``lr`` on the tensor's first step
    2. ``p <- p * (1 - lambd * eta)``
    3. ``u <- -eta * g``: the step added to ``p``, and ``p' = p + u``
    4. ``ax <- p'`` if ``mu == 1``, else ``ax + (p' - ax) * mu``  (slot ``ax``; scalar slot ``mu``, 1 at first)
    5. ``eta <- lr / (1 + lambd * lr * t) ** alpha`` and ``mu <- 1 / max(1, t - t0)``, for the next step

    So ``eta`` and ``mu`` are state: computed from this step's ``lr`` and used at the next, as torch
    does. The last transform of a chain: it returns the step itself, not a direction.
    """

    def all_slots(self) -> tuple[str, ...]:
        return ("ax",)

    def scalar_slots(self) -> Mapping[str, float]:
        return MappingProxyType({"eta": 0.0, "mu": 1.0})  # eta's is unused: the first step takes lr

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        lr, lambd, alpha, t0 = effective_lr(ctx), ctx.hyper("lambd"), ctx.hyper("alpha"), ctx.hyper("t0")
        result = []
        for i, g in enumerate(updates):
            t = ctx.step(i)
            eta = where(ctx.previous_step(i) < 0.5, lr, ctx.state(i, "eta"))
            mu = ctx.state(i, "mu")
            ctx.params[i] = ctx.params[i] * (1.0 - lambd * eta)
            u = -eta * g
            new_param = ctx.params[i] + u  # the same node as the update model's p.new
            ax = ctx.state(i, "ax")
            ctx.set_state(i, "ax", where(mu < 1.0, ax + (new_param - ax) * mu, new_param))
            ctx.set_state(i, "eta", lr / (1.0 + lambd * lr * t) ** alpha)
            ctx.set_state(i, "mu", 1.0 / maximum(t - t0, 1.0))
            result.append(u)
        return result
