"""Functional forms update numpy arrays in place, as the reference formulas say."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.optim import functional as F
from tests import reference


def _arrays(rng, n=3):
    shapes = [(4, 3), (5,), ()][:n]
    return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("nesterov, momentum, dampening, weight_decay, maximize", [
    (False, 0.0, 0.0, 0.0, False), (False, 0.9, 0.2, 0.1, False), (True, 0.9, 0.0, 0.0, True),
])
def test_sgd(nesterov, momentum, dampening, weight_decay, maximize):
    rng = np.random.default_rng(0)
    params = _arrays(rng)
    expected = [p.copy() for p in params]
    buffers = [None] * len(params)
    states = [{} for _ in params]
    group = dict(lr=0.1, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                 maximize=maximize)
    held = list(params)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in params]
        F.sgd(params, grads, buffers, weight_decay=weight_decay, momentum=momentum, lr=0.1, dampening=dampening,
              nesterov=nesterov, maximize=maximize)
        pre = reference.preprocess(grads, group)
        expected = [reference.sgd(p, g, s, group) for p, g, s in zip(expected, pre, states)]
    for p, h, e, s, b in zip(params, held, expected, states, buffers):
        assert p is h
        np.testing.assert_allclose(p, e, rtol=1e-12)
        if momentum:
            np.testing.assert_allclose(b, s["momentum_buffer"], rtol=1e-12)
        else:
            assert b is None


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_and_adamw(name, amsgrad):
    rng = np.random.default_rng(1)
    params = _arrays(rng)
    expected = [p.copy() for p in params]
    m, v, vmax = ([np.zeros_like(p) for p in params] for _ in range(3))
    steps = [np.array(0.0) for _ in params[:2]] + [0]  # tensors and ints are both accepted
    states = [{} for _ in params]
    group = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, maximize=False)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in params]
        getattr(F, name)(params, grads, m, v, vmax, steps, amsgrad=amsgrad, beta1=0.9, beta2=0.99, lr=0.01,
                         weight_decay=0.1, eps=1e-8, maximize=False)
        expected = [getattr(reference, name)(p, g, s, group) for p, g, s in zip(expected, grads, states)]
    for i, (p, e, s) in enumerate(zip(params, expected, states)):
        np.testing.assert_allclose(p, e, rtol=1e-12)
        np.testing.assert_allclose(m[i], s["exp_avg"], rtol=1e-12)
        np.testing.assert_allclose(v[i], s["exp_avg_sq"], rtol=1e-12)
        if amsgrad:
            np.testing.assert_allclose(vmax[i], s["max_exp_avg_sq"], rtol=1e-12)
    assert [int(s) for s in steps] == [5, 5, 5]


@pytest.mark.parametrize("centered, momentum", [(False, 0.0), (True, 0.9)])
def test_rmsprop(centered, momentum):
    rng = np.random.default_rng(2)
    params = _arrays(rng)
    expected = [p.copy() for p in params]
    sq, ga, mb = ([np.zeros_like(p) for p in params] for _ in range(3))
    steps = [0, 0, 0]
    states = [{} for _ in params]
    group = dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=momentum, centered=centered)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in params]
        F.rmsprop(params, grads, sq, ga, mb, steps, lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.0,
                  momentum=momentum, centered=centered, maximize=False)
        expected = [reference.rmsprop(p, g, s, group) for p, g, s in zip(expected, grads, states)]
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p, e, rtol=1e-12)
    assert steps == [5, 5, 5]


def test_bad_input_names_the_entry():
    params = [np.zeros(3), np.zeros(2)]
    with pytest.raises(ValueError, match=r"params\[1\].*expected shape \(2,\), got \(3,\)"):
        F.sgd(params, [np.zeros(3), np.zeros(3)], [None, None], weight_decay=0, momentum=0, lr=0.1, dampening=0,
              nesterov=False, maximize=False)
    with pytest.raises(ValueError, match="grads: expected 2 entries"):
        F.sgd(params, [np.zeros(3)], [None, None], weight_decay=0, momentum=0, lr=0.1, dampening=0,
              nesterov=False, maximize=False)
    with pytest.raises(TypeError, match=r"params\[0\]: expected a C-contiguous float numpy array"):
        F.sgd([np.zeros(3, int)], [np.zeros(3)], [None], weight_decay=0, momentum=0, lr=0.1, dampening=0,
              nesterov=False, maximize=False)
