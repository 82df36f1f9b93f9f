"""Adafactor's update: factored second moments, a relative step size and update clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graphopt.symbolic import matmul, maximum, mean_over, minimum, sqrt, sum_of_squares_over
from graphopt.transforms.base import Context, Transform, Updates
from graphopt.transforms.learning_rate import effective_lr


@dataclass(frozen=True)
class ScaleByAdafactor(Transform):
    """Adafactor (Shazeer & Stern, 2018) in torch.optim.Adafactor's form, per tensor, ``t`` its step
    count, ``n`` its number of elements, ``lr`` meaning ``lr * lr_mult``:

    1. ``w = t ** beta2_decay``, ``rho = min(lr, 1 / sqrt(t))``
    2. ``alpha = max(eps2, norm(p) / sqrt(n)) * rho``   (``p`` before any weight decay)
    3. rank >= 2: ``R <- R + w * (mean(g * g, -1) - R)``, ``C <- C + w * (mean(g * g, -2) - C)``
       (slots ``row_var`` ``[..., rows, 1]`` and ``col_var`` ``[..., 1, cols]``),
       ``V = (R @ C) / max(mean(R, -2), eps1)``;
       rank < 2: ``V <- V + w * (g * g - V)``               (slot ``variance``)
    4. ``u = g / sqrt(max(V, eps1 ** 2))``
    5. the step: ``-alpha / max(1, norm(u) / (sqrt(n) * d)) * u``

    ``eps1`` is the hyperparameter, or (``eps1_from_dtype``, torch's ``eps=(None, ...)``) the machine
    epsilon of the tensor's dtype. Norms and means are per tensor: the chain runs per tensor only.
    The last transform of a chain but for decoupled weight decay: it returns the step itself.
    """

    eps1_from_dtype: bool = False

    def shaped_slots(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        if len(shape) >= 2:
            return {"row_var": (*shape[:-1], 1), "col_var": (*shape[:-2], 1, shape[-1])}
        return {"variance": tuple(shape)}

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        lr, beta2_decay, eps2, d = effective_lr(ctx), ctx.hyper("beta2_decay"), ctx.hyper("eps2"), ctx.hyper("d")
        result = []
        for i, g in enumerate(updates):
            eps1 = float(np.finfo(g.dtype).eps) if self.eps1_from_dtype else ctx.hyper("eps1")
            t = ctx.step(i)
            w = t ** beta2_decay
            root_n = math.sqrt(max(math.prod(g.shape), 1))
            alpha = maximum(eps2, sqrt(ctx.tensor_sum_of_squares(ctx.params[i])) / root_n) * minimum(lr, 1.0 / sqrt(t))
            if g.ndim >= 2:
                row = self._lerp(ctx, i, "row_var", sum_of_squares_over(g, -1) * (1.0 / max(g.shape[-1], 1)), w)
                col = self._lerp(ctx, i, "col_var", sum_of_squares_over(g, -2) * (1.0 / max(g.shape[-2], 1)), w)
                variance = matmul(row, col) / maximum(mean_over(row, -2), eps1)
            else:
                variance = self._lerp(ctx, i, "variance", g * g, w)
            u = g / sqrt(maximum(variance, eps1 * eps1))
            clipping = maximum(1.0, sqrt(ctx.tensor_sum_of_squares(u)) / (root_n * d))
            result.append(-(alpha / clipping) * u)
        return result

    @staticmethod
    def _lerp(ctx: Context, i: int, slot: str, target, weight):
        """``slot <- slot + weight * (target - slot)`` (torch's ``lerp_``); returns the new value."""
        value = ctx.state(i, slot)
        value = value + weight * (target - value)
        ctx.set_state(i, slot, value)
        return value
