"""Multiplying the gradient: the seeds' ``scale`` and torch's ``maximize``."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class Scale(Transform):
    """``u <- scale * u``, with ``scale`` the group hyperparameter of that name."""

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        scale = ctx.hyper("scale")
        return [scale * u for u in updates]


@dataclass(frozen=True)
class Maximize(Transform):
    """``u <- -u``: ascend the objective instead of descending it."""

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        return [-u for u in updates]
