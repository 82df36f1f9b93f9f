"""Layer-wise trust ratios: each tensor's step scaled by a ratio of norms (LAMB, LARS)."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import Sym, minimum, sqrt, where
from graphopt.transforms.base import Context, Transform, Updates
from graphopt.transforms.learning_rate import effective_weight_decay


def _guarded(p_norm: Sym, u_norm: Sym, ratio: Sym) -> Sym:
    """``ratio`` where both norms are > 0, else 1."""
    return where(p_norm > 0.0, where(u_norm > 0.0, ratio, 1.0), 1.0)


@dataclass(frozen=True)
class ScaleByTrustRatio(Transform):
    """LAMB's layer-wise scaling (You et al., 2020), per tensor:

    1. ``n_p <- ||p||``, clamped to at most ``clamp_value`` if ``clamp`` (``phi`` of the paper)
    2. ``u <- (n_p / ||u||) * u``, or ``u`` unchanged if ``n_p = 0`` or ``||u|| = 0``

    Norms are L2 over the tensor, accumulated in float64.
    """

    clamp: bool = False

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        result = []
        for u, p in zip(updates, ctx.params):
            p_norm = sqrt(ctx.tensor_sum_of_squares(p))
            if self.clamp:
                p_norm = minimum(p_norm, ctx.hyper("clamp_value"))
            u_norm = sqrt(ctx.tensor_sum_of_squares(u))
            result.append(_guarded(p_norm, u_norm, p_norm / u_norm) * u)
        return result


@dataclass(frozen=True)
class ScaleByLarsTrustRatio(Transform):
    """LARS's local learning rate (You et al., 2017) with its weight decay, per tensor:

    1. ``local <- trust_coef * ||p|| / (||g|| + wd * ||p|| + eps)``, or 1 if ``||p|| = 0`` or ``||g|| = 0``,
       with ``wd = weight_decay * decay_mult``
    2. ``u <- local * (g + wd * p)``
    """

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        coef, eps, decay = ctx.hyper("trust_coef"), ctx.hyper("eps"), effective_weight_decay(ctx)
        result = []
        for g, p in zip(updates, ctx.params):
            p_norm, g_norm = sqrt(ctx.tensor_sum_of_squares(p)), sqrt(ctx.tensor_sum_of_squares(g))
            local = _guarded(p_norm, g_norm, coef * p_norm / (g_norm + decay * p_norm + eps))
            result.append(local * (g + decay * p))
        return result
