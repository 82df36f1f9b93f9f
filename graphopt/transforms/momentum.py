"""Heavy-ball momentum with dampening and Nesterov, as torch.optim.SGD applies it."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import where
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class Momentum(Transform):
    """Momentum buffer ``b`` (slot ``momentum_buffer``), torch's formula:

    1. ``b <- g`` on a tensor's first step, else ``b <- momentum * b + (1 - dampening) * g``
    2. ``u <- g + momentum * b`` if ``nesterov``, else ``u <- b``

    The first-step case is chosen by scalar arithmetic on the step count, so it costs
    no extra pass over the tensor.
    """

    nesterov: bool = False
    slots = ("momentum_buffer",)

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        momentum, dampening = ctx.hyper("momentum"), ctx.hyper("dampening")
        result = []
        for i, g in enumerate(updates):
            later = ctx.step(i) > 1.0
            keep = where(later, momentum, 0.0)
            take = where(later, 1.0 - dampening, 1.0)
            buffer = ctx.accumulate(i, "momentum_buffer", keep, take * g)
            result.append(g + momentum * buffer if self.nesterov else buffer)
        return result
