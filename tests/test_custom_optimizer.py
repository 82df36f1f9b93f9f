"""A new optimizer is a transform and a screenful of code (the README's example)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import graphopt
from graphopt.optim import Optimizer
from graphopt.transforms import ScaleByLearningRate, Transform, chain


@dataclass(frozen=True)
class ScaleBySign(Transform):
    """u <- u / (|u| + eps), i.e. sign(u) (signSGD)."""

    def apply(self, updates, ctx):
        return [u / (abs(u) + ctx.hyper("eps")) for u in updates]


class SignSGD(Optimizer):
    def __init__(self, params=None, lr=1e-3, eps=1e-12):
        super().__init__(params, dict(lr=lr, eps=eps))

    def _transform(self, group):
        return chain(ScaleBySign(), ScaleByLearningRate())


def test_sign_sgd_steps_by_lr_in_the_gradient_sign():
    w = graphopt.Parameter(np.zeros(4, np.float32))
    optimizer = SignSGD([w], lr=0.1)
    grad = np.array([1.0, -2.0, 3.0, -1e-3], np.float32)
    for _ in range(3):
        w.grad = grad
        optimizer.step()
    np.testing.assert_allclose(w.data, -0.3 * np.sign(grad), rtol=1e-5)
    model = optimizer.export()
    assert {i.name for i in model.graph.input} == {"p0", "p0.grad", "group0.eps", "group0.lr", "group0.lr_mult"}
