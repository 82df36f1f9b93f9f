"""SparseAdam's direction: Adam's moments and step, only where the gradient is non-zero."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.symbolic import sqrt, where
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class ScaleBySparseAdam(Transform):
    """torch.optim.SparseAdam's update on a dense gradient whose exact zeros are absent entries.

    Per tensor, ``t`` its step count, at the elements where ``g != 0`` only (elsewhere the moments
    are kept and ``u = 0``):

    1. ``m <- m + (1 - beta1) * (g - m)``             (slot ``exp_avg``)
    2. ``v <- v + (1 - beta2) * (g * g - v)``         (slot ``exp_avg_sq``)
    3. ``u <- (sqrt(1 - beta2 ** t) / (1 - beta1 ** t)) * m / (sqrt(v) + eps)``

    Note ``eps`` is added to ``sqrt(v)`` before the bias correction, as in torch's SparseAdam (Adam adds it after).
    """

    slots = ("exp_avg", "exp_avg_sq")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        beta1, beta2, eps = ctx.hyper("beta1"), ctx.hyper("beta2"), ctx.hyper("eps")
        result = []
        for i, g in enumerate(updates):
            absent = g.graph.elementwise("Equal", g, 0.0, result_dtype=np.dtype(bool))
            t = ctx.step(i)
            m_old, v_old = ctx.state(i, "exp_avg"), ctx.state(i, "exp_avg_sq")
            m = m_old + (1.0 - beta1) * (g - m_old)
            v = v_old + (1.0 - beta2) * (g * g - v_old)
            ctx.set_state(i, "exp_avg", where(absent, m_old, m))
            ctx.set_state(i, "exp_avg_sq", where(absent, v_old, v))
            step = m / (sqrt(v) + eps) * (sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t))
            result.append(where(absent, 0.0, step))
        return result
