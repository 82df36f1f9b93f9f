"""NAdam's direction: Adam's moments with Nesterov momentum and a momentum schedule."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from graphopt.symbolic import sqrt
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleByNadam(Transform):
    """NAdam (Dozat, 2016), torch's formula, ``t`` the tensor's step count:

    1. ``mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``, ``mu_next`` the same at ``t + 1``
    2. ``mu_product <- mu_product * mu``                     (scalar slot ``mu_product``, 1 at first)
    3. ``m <- beta1 * m + (1 - beta1) * g``                  (slot ``exp_avg``)
    4. ``v <- beta2 * v + (1 - beta2) * g * g``              (slot ``exp_avg_sq``)
    5. ``u <- ((1 - mu) / (1 - mu_product) * g + mu_next / (1 - mu_product * mu_next) * m)
       / (sqrt(v / (1 - beta2 ** t)) + eps)``, computed as Adam's is: the scalar
       ``sqrt(1 - beta2 ** t)`` moved out of the denominator.

    ``mu_product`` is state, not a function of ``t``: it is the product of every ``mu`` the
    tensor has seen, so a ``momentum_decay`` (or ``beta1``) changed mid-run changes only later factors.
    """

    def all_slots(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def scalar_slots(self) -> Mapping[str, float]:
        return MappingProxyType({"mu_product": 1.0})

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        beta1, beta2, eps = ctx.hyper("beta1"), ctx.hyper("beta2"), ctx.hyper("eps")
        decay = ctx.hyper("momentum_decay")
        result = []
        for i, g in enumerate(updates):
            t = ctx.step(i)
            mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * decay))
            mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * decay))
            mu_product = ctx.state(i, "mu_product") * mu
            ctx.set_state(i, "mu_product", mu_product)
            m = ctx.accumulate(i, "exp_avg", beta1, (1.0 - beta1) * g)
            v = ctx.accumulate(i, "exp_avg_sq", beta2, ((1.0 - beta2) * g) * g)
            root_c2 = sqrt(1.0 - beta2 ** t)
            grad_weight = root_c2 * (1.0 - mu) / (1.0 - mu_product)
            momentum_weight = root_c2 * mu_next / (1.0 - mu_product * mu_next)
            result.append((grad_weight * g + momentum_weight * m) / (sqrt(v) + eps * root_c2))
        return result
