"""Learning rate with the group's ``lr_mult``, the last step of every optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import Sym
from graphopt.transforms.base import Context, Transform, Updates


def effective_lr(ctx: Context) -> Sym:
    """``lr * lr_mult`` (a scalar, computed once per step)."""
    return ctx.hyper("lr") * ctx.hyper("lr_mult")


def effective_weight_decay(ctx: Context) -> Sym:
    """``weight_decay * decay_mult`` (a scalar, computed once per step)."""
    return ctx.hyper("weight_decay") * ctx.hyper("decay_mult")


@dataclass(frozen=True)
class ScaleByLearningRate(Transform):
    """``u <- -(lr * lr_mult) * u``: turns a descent direction into the parameter step."""

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        step_size = -effective_lr(ctx)
        return [step_size * u for u in updates]
