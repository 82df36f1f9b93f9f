"""Bad input gets a clear error naming the culprit, and a failing step changes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphopt
from graphopt import optim
from graphopt.runtime import Executable
from graphopt.runtime.parallel import RowParallel


def _param(shape=(3,), dtype=np.float32, name=None):
    return graphopt.Parameter(np.linspace(-1, 1, int(np.prod(shape))).reshape(shape).astype(dtype), name=name)


# -- gradients -------------------------------------------------------------------


def test_grad_of_wrong_shape_names_the_parameter():
    w = _param(name="weight")
    with pytest.raises(ValueError, match=r"'weight'.*expected shape \(3,\), got \(4,\)"):
        w.grad = np.ones(4, np.float32)


def test_grad_of_wrong_dtype_names_the_parameter():
    w = _param(name="bias")
    with pytest.raises(TypeError, match=r"'bias'.*expected dtype float32, got float64"):
        w.grad = np.ones(3)


def test_bad_grad_that_bypassed_the_setter_is_caught_by_step():
    a, b = _param(), _param((2, 2))
    optimizer = optim.Adam([a, b], lr=0.1)
    a.grad = np.ones(3, np.float32)
    b._grad = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"'p1' \(params\[1\] of param group 0\).*shape \(2, 2\)"):
        optimizer.step()
    assert optimizer.state == {}
    np.testing.assert_array_equal(a.data, np.linspace(-1, 1, 3).astype(np.float32))


def test_parameter_rejects_integer_arrays():
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        graphopt.Parameter(np.arange(3))


# -- hyperparameters ---------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD([p], lr=math.nan), r"param group 0: 'lr' must be finite"),
    (lambda p: optim.SGD([p], lr=math.inf), r"'lr' must be finite"),
    (lambda p: optim.SGD([p], lr=-0.1), r"'lr' must be >= 0"),
    (lambda p: optim.SGD([p], lr="0.1"), r"'lr' must be a real number"),
    (lambda p: optim.SGD([p]), r"'lr' is required"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=-0.9), r"'momentum' must be >= 0"),
    (lambda p: optim.SGD([p], lr=0.1, weight_decay=-1e-4), r"'weight_decay' must be >= 0"),
    (lambda p: optim.SGD([p], lr=0.1, nesterov=True), r"nesterov=True needs momentum > 0 and dampening = 0"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"nesterov=True needs"),
    (lambda p: optim.Adam([p], betas=(1.0, 0.999)), r"'betas\[0\]' must be in \[0, 1\)"),
    (lambda p: optim.Adam([p], betas=(0.9, -0.1)), r"'betas\[1\]' must be in \[0, 1\)"),
    (lambda p: optim.Adam([p], betas=(0.9,)), r"'betas' must be a pair"),
    (lambda p: optim.Adam([p], eps=-1e-8), r"'eps' must be >= 0"),
    (lambda p: optim.AdamW([p], weight_decay=-0.01), r"'weight_decay' must be >= 0"),
    (lambda p: optim.RMSprop([p], alpha=1.5), r"'alpha' must be in \[0, 1\)"),
    (lambda p: optim.RMSprop([p], momentum=-1), r"'momentum' must be >= 0"),
    (lambda p: optim.RMSprop([p], centered=1), r"'centered' must be True or False"),
    (lambda p: optim.Adam([p], clip_norm=-1), r"'clip_norm' must be >= 0"),
    (lambda p: optim.Adam([{"params": [p], "lr_mult": -2}]), r"param group 0: 'lr_mult' must be >= 0"),
])
def test_bad_hyperparameter_is_named(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make(_param())


def test_bad_setting_in_second_group_names_that_group():
    optimizer = optim.SGD([_param()], lr=0.1)
    with pytest.raises(ValueError, match=r"SGD param group 1: 'momentum' must be >= 0"):
        optimizer.add_param_group({"params": [_param()], "momentum": -1})
    assert len(optimizer.param_groups) == 1


def test_differentiable_is_not_implemented():
    with pytest.raises(NotImplementedError, match="differentiable"):
        optim.SGD([_param()], lr=0.1, differentiable=True)


def test_foreach_is_accepted():
    w = _param()
    optimizer = optim.SGD([w], lr=0.1, foreach=True)
    w.grad = np.ones(3, np.float32)
    optimizer.step()


# -- param groups ------------------------------------------------------------------


def test_parameter_in_two_groups():
    w = _param(name="shared")
    optimizer = optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match=r"'shared'.*already in param group 0"):
        optimizer.add_param_group({"params": [w]})


def test_parameter_twice_in_one_group():
    w = _param()
    with pytest.raises(ValueError, match="already in this group"):
        optim.SGD([w, w], lr=0.1)


def test_non_parameter_in_group():
    with pytest.raises(TypeError, match=r"params\[1\] must be a graphopt.Parameter, got ndarray"):
        optim.SGD([_param(), np.zeros(3)], lr=0.1)


def test_empty_parameter_list():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])


def test_duplicate_names():
    with pytest.raises(ValueError, match="two parameters are named 'w'"):
        optim.Adam([_param(name="w"), _param(name="w")])


# -- a step that fails changes nothing -------------------------------------------------


def _trained(kind="Adam", **kwargs):
    params = [_param(), _param((2, 2))]
    optimizer = getattr(optim, kind)(params, **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = np.full(p.shape, 0.3, np.float32)
        optimizer.step()
    return params, optimizer


def _snapshot(params, optimizer):
    return [p.data.copy() for p in params], optimizer.state_dict()


def _assert_unchanged(params, optimizer, snapshot):
    data, saved = snapshot
    for p, before in zip(params, data):
        np.testing.assert_array_equal(p.data, before)
    now = optimizer.state_dict()
    assert now["state"].keys() == saved["state"].keys()
    for i, slots in saved["state"].items():
        assert now["state"][i].keys() == slots.keys()
        for key, value in slots.items():
            np.testing.assert_array_equal(now["state"][i][key], value)


def test_invalid_lr_set_between_steps_raises_and_changes_nothing():
    params, optimizer = _trained()
    snapshot = _snapshot(params, optimizer)
    optimizer.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="'lr' must be finite"):
        optimizer.step()
    _assert_unchanged(params, optimizer, snapshot)


def _fail_before_running(monkeypatch):
    """Make both execution paths (chunked rows, per-tensor graph) fail before ONNX Runtime runs."""
    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(Executable, "run", fail)
    monkeypatch.setattr(RowParallel, "run", fail)


@pytest.mark.parametrize("skip_one", [False, True], ids=["chunked", "per-tensor"])
@pytest.mark.parametrize("kind", ["SGD", "Adam", "RMSprop"])
def test_failure_before_the_update_changes_nothing(kind, skip_one, monkeypatch):
    params, optimizer = _trained(kind, lr=0.1, **({"momentum": 0.9} if kind == "SGD" else {}))
    if skip_one:
        params[1].grad = None  # the group then takes the per-tensor path
    snapshot = _snapshot(params, optimizer)
    _fail_before_running(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        optimizer.step()
    _assert_unchanged(params, optimizer, snapshot)


def test_bad_grad_in_a_later_group_stops_every_group():
    a, b = _param(), _param((2, 2))
    optimizer = optim.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad = np.ones(3, np.float32)
    b._grad = np.ones(3, np.float32)
    before = a.data.copy()
    with pytest.raises(ValueError, match=r"params\[0\] of param group 1"):
        optimizer.step()
    np.testing.assert_array_equal(a.data, before)
    assert optimizer.state == {}


def test_failing_first_step_creates_no_state(monkeypatch):
    w = _param()
    optimizer = optim.Adam([w], lr=0.1)
    w.grad = np.ones(3, np.float32)
    _fail_before_running(monkeypatch)
    with pytest.raises(RuntimeError):
        optimizer.step()
    assert optimizer.state == {}


# -- load_state_dict ---------------------------------------------------------------


def test_state_dict_of_another_optimizer_is_refused_and_changes_nothing():
    params, adam = _trained("Adam", lr=0.1)
    _, sgd = _trained("SGD", lr=0.1, momentum=0.9)
    snapshot = _snapshot(params, adam)
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: the state dict is from SGD, this optimizer is Adam"):
        adam.load_state_dict(sgd.state_dict())
    old = {k: v for k, v in sgd.state_dict().items() if k != "class"}  # as written before 'class' existed
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: param group 0: settings differ.*another optimizer"):
        adam.load_state_dict(old)
    _assert_unchanged(params, adam, snapshot)


def test_state_dict_with_foreign_slots_is_refused():
    params, adam = _trained("Adam", lr=0.1)
    saved = adam.state_dict()
    saved["state"][1]["momentum_buffer"] = saved["state"][1].pop("exp_avg")
    with pytest.raises(ValueError, match=r"state of parameter 'p1'.*expected 'step' and slots"):
        adam.load_state_dict(saved)


def test_state_dict_with_wrong_shape_is_refused():
    params, adam = _trained("Adam", lr=0.1)
    saved = adam.state_dict()
    saved["state"][1]["exp_avg"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match=r"slot 'exp_avg' must be a float array of shape \(2, 2\)"):
        adam.load_state_dict(saved)


def test_state_dict_with_other_group_layout_is_refused():
    _, adam = _trained("Adam", lr=0.1)
    saved = adam.state_dict()
    saved["param_groups"][0]["params"] = [0]
    with pytest.raises(ValueError, match="has 1 parameters, this group 2"):
        adam.load_state_dict(saved)
    with pytest.raises(ValueError, match="2 param groups, this optimizer 1"):
        adam.load_state_dict({"state": {}, "param_groups": saved["param_groups"] * 2})


def test_state_dict_with_bad_hyperparameter_is_refused():
    params, adam = _trained("Adam", lr=0.1)
    saved = adam.state_dict()
    saved["param_groups"][0]["betas"] = (1.5, 0.9)
    with pytest.raises(ValueError, match=r"'betas\[0\]' must be in \[0, 1\)"):
        adam.load_state_dict(saved)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)


def test_unavailable_provider_is_named():
    with pytest.raises(ValueError, match=r"providers: 'NoSuchExecutionProvider' is not available"):
        optim.Adam([_param()], providers=["NoSuchExecutionProvider"])
