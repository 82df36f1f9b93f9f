"""The non-finite guard (issue 11, item 5): a step whose gradients hold a NaN or inf is skipped
whole -- every group's parameters, state and step counts unchanged bit for bit -- and reported.

The reference for "skipped" is a snapshot taken before the step; for the steps after it, the
same optimizer run that never saw the bad gradients.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import names, optim

SHAPES = [(6, 5), (7,), (3, 2)]
BAD = [np.nan, np.inf, -np.inf]


def _setup(kind, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    params = [graphopt.Parameter(rng.standard_normal(s), name=f"w{i}") for i, s in enumerate(SHAPES)]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}]
    return params, getattr(optim, kind)(groups, lr=0.1, skip_nonfinite=True, **kwargs)


def _grads(seed):
    rng = np.random.default_rng(100 + seed)
    return [rng.standard_normal(s) for s in SHAPES]


def _snapshot(params, opt):
    return [p.data.copy() for p in params], {id(p): {k: np.copy(v) for k, v in s.items()} for p, s in
                                             opt.state.items()}


def _assert_same(snapshot, params, opt):
    data, state = snapshot
    for p, before in zip(params, data):
        np.testing.assert_array_equal(p.data, before)
    assert {id(p) for p in opt.state} == set(state)
    for p, entry in opt.state.items():
        for key, value in entry.items():
            np.testing.assert_array_equal(value, state[id(p)][key], err_msg=key)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("kind, kwargs", [("SGD", dict(momentum=0.9)), ("Adam", dict(weight_decay=0.1)),
                                          ("RMSprop", dict(centered=True))])
@pytest.mark.parametrize("pattern", ["all", "one_missing"])
def test_a_nonfinite_gradient_skips_every_group_and_later_steps_continue_as_if_it_never_came(bad, kind, kwargs,
                                                                                             pattern):
    params, opt = _setup(kind, **kwargs)
    reference_params, reference = _setup(kind, **kwargs)
    missing = {1} if pattern == "one_missing" else set()  # one_missing: the per-tensor path
    for step in range(6):
        grads = _grads(step)
        for i, (p, q) in enumerate(zip(params, reference_params)):
            p.grad = None if i in missing else grads[i]
            q.grad = None if i in missing else grads[i]
        opt.step()
        reference.step()
        if step == 2:  # a bad gradient in the *last* group only: the first group must not move either
            snapshot = _snapshot(params, opt)
            bad_grad = grads[2].copy()
            bad_grad[1, 0] = bad
            params[2].grad = bad_grad
            opt.step()
            assert opt.found_inf and opt.skipped_steps == 1
            _assert_same(snapshot, params, opt)
        else:
            assert not opt.found_inf
    for p, q in zip(params, reference_params):
        np.testing.assert_array_equal(p.data, q.data)
        assert (p in opt.state) == (q in reference.state)
        for key, value in reference.state.get(q, {}).items():
            np.testing.assert_array_equal(opt.state[p][key], value, err_msg=key)


def test_summed_gradients_are_checked_and_a_stale_value_of_a_tensor_without_gradient_is_not():
    params, opt = _setup("Adam")
    for p, g in zip(params, _grads(0)):
        p.grad = g
    opt.sum_grad()
    params[0].grad[0, 0] = np.inf  # the current gradient is added to the sum: the sum is not finite
    opt.sum_grad()
    snapshot = _snapshot(params, opt)
    opt.step()
    assert opt.found_inf
    _assert_same(snapshot, params, opt)
    params[0].grad = None  # its storage still holds the inf, but it has no gradient now
    for p, g in zip(params[1:], _grads(1)[1:]):
        p.grad = g
    opt.step()
    assert not opt.found_inf and opt.skipped_steps == 1
    assert 0 not in opt.state_dict()["state"] and opt.state[params[1]]["step"] == 1


def test_without_the_option_a_nonfinite_gradient_is_applied_as_torch_applies_it():
    p = graphopt.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.array([1.0, np.nan, 0.0])
    opt.step()
    assert np.isnan(p.data[1]) and p.data[0] == 0.9 and not opt.found_inf


def test_the_exported_update_decides_in_the_graph():
    params, opt = _setup("Adam")
    model = opt.export()
    assert names.FOUND_INF in [o.name for o in model.graph.output]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i, (p, g) in enumerate(zip(params, _grads(0))):
        feeds[p.name], feeds[names.grad(p.name)] = p.data, g
        feeds[names.step(p.name)] = np.array(0.0)
        for slot in ("exp_avg", "exp_avg_sq"):
            feeds[names.state(p.name, slot)] = np.zeros(p.shape)
    feeds.update({names.hyper(g, k): np.array(float(v)) for g, group in zip(("group0", "group1"), opt.param_groups)
                  for k, v in opt._hyperparameters(group).items()})  # noqa: SLF001
    inputs = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    outputs = [o.name for o in session.get_outputs()]
    finite = dict(zip(outputs, session.run(None, feeds)))
    assert not finite[names.FOUND_INF]
    for p, g in zip(params, _grads(0)):
        p.grad = g
    opt.step()
    for p in params:
        np.testing.assert_allclose(finite[names.new(p.name)], p.data, rtol=1e-12)
    feeds[names.grad("w0")] = feeds[names.grad("w0")].copy()
    feeds[names.grad("w0")][2, 3] = np.nan
    skipped = dict(zip(outputs, session.run(None, feeds)))
    assert skipped[names.FOUND_INF]
    for name in outputs:
        if name.endswith(names.NEW):
            np.testing.assert_array_equal(skipped[name], feeds[name.removesuffix(names.NEW)], err_msg=name)


def test_skip_nonfinite_must_be_a_bool():
    with pytest.raises(TypeError, match="'skip_nonfinite' must be True or False"):
        optim.SGD([graphopt.Parameter(np.ones(2))], lr=0.1, skip_nonfinite="yes")
