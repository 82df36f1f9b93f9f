"""Muon's momentum (an exponential average, with Nesterov) and its shape-adjusted learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from graphopt.transforms.base import Context, Transform, Updates
from graphopt.transforms.learning_rate import effective_lr

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


@dataclass(frozen=True)
class MuonMomentum(Transform):
    """torch.optim.Muon's momentum buffer ``b`` (slot ``momentum_buffer``, starting at zeros):

    1. ``b <- b + (1 - momentum) * (g - b)``        (``b.lerp_(g, 1 - momentum)``)
    2. ``u <- g + momentum * (b - g)`` if ``nesterov`` (``g.lerp(b, momentum)``), else ``u <- b``
    """

    nesterov: bool = True
    slots = ("momentum_buffer",)

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        momentum = ctx.hyper("momentum")
        result = []
        for i, g in enumerate(updates):
            old = ctx.state(i, "momentum_buffer")
            buffer = old + (1.0 - momentum) * (g - old)
            ctx.set_state(i, "momentum_buffer", buffer)
            result.append(g + momentum * (buffer - g) if self.nesterov else buffer)
        return result


def lr_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch's ``_adjust_lr`` factor for a ``[A, B]`` matrix: ``sqrt(max(1, A / B))`` ("original",
    the default) or ``0.2 * sqrt(max(A, B))`` ("match_rms_adamw")."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")


@dataclass(frozen=True)
class ScaleByAdjustedLearningRate(Transform):
    """``u <- -(lr * lr_mult * ratio) * u``, ``ratio = lr_ratio(adjust_lr_fn, shape of p)`` (a constant per tensor)."""

    adjust_lr_fn: str | None = None

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        lr = effective_lr(ctx)
        return [-(lr * lr_ratio(self.adjust_lr_fn, p.shape)) * u for u, p in zip(updates, ctx.params)]
