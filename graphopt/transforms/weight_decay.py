"""Weight decay: coupled (an L2 term in the gradient) and decoupled (AdamW)."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.transforms.base import Context, Transform, Updates
from graphopt.transforms.learning_rate import effective_lr, effective_weight_decay


@dataclass(frozen=True)
class AddWeightDecay(Transform):
    """Coupled L2 decay: ``u <- u + (weight_decay * decay_mult) * p``."""

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        decay = effective_weight_decay(ctx)
        return [u + decay * p for u, p in zip(updates, ctx.params)]


@dataclass(frozen=True)
class DecoupledWeightDecay(Transform):
    """Decoupled decay (Loshchilov & Hutter): ``p <- p * (1 - lr * lr_mult * weight_decay * decay_mult)``.

    Shrinks the parameter the final update is added to; the updates pass unchanged.
    """

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        keep = 1.0 - effective_lr(ctx) * effective_weight_decay(ctx)
        ctx.params = [p * keep for p in ctx.params]
        return updates
