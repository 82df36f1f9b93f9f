"""The eager facade: Parameter, param groups, gradients, state_dict, session reuse."""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import optim


def _param(values, dtype=np.float32, name=None):
    return graphopt.Parameter(np.asarray(values, dtype), name=name)


# -- the seed examples ---------------------------------------------------------------


def test_sum_grad_seed_example_ends_at_0_4():
    x = _param([1.0])
    optimizer = optim.SGD([x], lr=0.1)
    for _epoch in range(2):
        for _step in range(3):
            x.grad = np.ones(1, np.float32)  # d(x + 1)/dx, as a backward pass would set it
            optimizer.sum_grad()
        optimizer.step()
    np.testing.assert_allclose(x.data, [0.4], rtol=1e-6)


def test_accumulate_grad_is_sum_grad():
    x = _param([1.0])
    optimizer = optim.SGD([x], lr=0.1)
    for _ in range(3):
        x.grad = np.ones(1, np.float32)
        optimizer.accumulate_grad()
    optimizer.step()
    np.testing.assert_allclose(x.data, [0.7], rtol=1e-6)


def test_sum_grad_first_call_after_step_overwrites():
    x = _param([0.0])
    optimizer = optim.SGD([x], lr=1.0)
    x.grad = np.array([5.0], np.float32)
    optimizer.sum_grad()
    optimizer.step()                      # x = -5
    x.grad = np.array([2.0], np.float32)
    optimizer.sum_grad()                  # a new sum: 2, not 7
    x.grad = np.array([1.0], np.float32)
    optimizer.sum_grad()                  # 3
    optimizer.step()
    np.testing.assert_allclose(x.data, [-8.0])
    x.grad = np.array([10.0], np.float32)
    optimizer.step()                      # no sum since the step: the plain grad is used
    np.testing.assert_allclose(x.data, [-18.0])


def test_zero_grad_in_place_and_set_to_none():
    a, b = _param([1.0, 2.0]), _param([3.0])
    optimizer = optim.SGD([a, b], lr=0.1)
    a.grad = np.ones(2, np.float32)
    grad = a.grad  # the optimizer's gradient storage, holding a copy of the assigned array
    optimizer.zero_grad()
    assert a.grad is grad and not grad.any() and b.grad is None
    optimizer.zero_grad(set_to_none=True)
    assert a.grad is None
    a.grad = np.ones(2, np.float32)
    optimizer.zero_grad(reset=True)       # the seed's spelling
    assert a.grad is None


def test_zero_grad_set_to_none_skips_params_in_step():
    m1, m2 = _param([1.0, 1.0]), _param([1.0])
    optimizer = optim.SGD([m1, m2], lr=0.5)
    optimizer.zero_grad(set_to_none=True)
    m1.grad = np.ones(2, np.float32)      # only m1 took part in this "backward"
    optimizer.step()
    np.testing.assert_allclose(m1.data, [0.5, 0.5])
    np.testing.assert_allclose(m2.data, [1.0])
    assert m2 not in optimizer.state


def test_add_param_group_lr_mult_and_decay_mult():
    w1, w2 = _param([1.0]), _param([1.0])
    optimizer = optim.SGD([w1], lr=0.1, weight_decay=0.5)
    optimizer.add_param_group({"params": [w2], "lr_mult": 2.0, "decay_mult": 0.0})
    assert optimizer.param_groups[1]["lr"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.5
    for p in (w1, w2):
        p.grad = np.ones(1, np.float32)
    optimizer.step()
    np.testing.assert_allclose(w1.data, [1 - 0.1 * (1 + 0.5 * 1.0)], rtol=1e-6)
    np.testing.assert_allclose(w2.data, [1 - 0.1 * 2.0 * 1.0], rtol=1e-6)


def test_add_param_group_redefines_settings():
    w1, w2 = _param([1.0]), _param([1.0])
    optimizer = optim.SGD([w1], lr=0.1)
    optimizer.add_param_group({"params": w2, "lr": 0.01, "weight_decay": 1e-4})
    assert optimizer.param_groups[1]["lr"] == 0.01
    assert optimizer.param_groups[1]["weight_decay"] == 1e-4
    assert optimizer.param_groups[0]["weight_decay"] == 0


def test_construction_without_params():
    optimizer = optim.SGD(lr=0.1)
    assert optimizer.param_groups == []
    optimizer.step()                      # nothing to do
    w = _param([2.0])
    optimizer.add_param_group({"params": [w]})
    w.grad = np.ones(1, np.float32)
    optimizer.step()
    np.testing.assert_allclose(w.data, [1.9], rtol=1e-6)


def test_step_closure_value_is_returned():
    w = _param([2.0])
    optimizer = optim.SGD([w], lr=0.1)

    def closure():
        w.grad = 2 * w.data.copy()
        return float(w.data[0] ** 2)

    assert optimizer.step(closure) == pytest.approx(4.0)
    np.testing.assert_allclose(w.data, [2.0 - 0.1 * 4.0], rtol=1e-6)


# -- Parameter ---------------------------------------------------------------------


def test_data_reference_stays_current():
    w = _param(np.ones(5))
    optimizer = optim.Adam([w], lr=0.1)
    held = w.data  # taken once the optimizer adopted w
    for _ in range(3):
        w.grad = np.ones(5, np.float32)
        optimizer.step()
    assert held is w.data
    assert np.all(held < 1.0)


def test_parameter_copies_input_and_assigning_data_copies_in_place():
    source = np.zeros(3, np.float32)
    w = graphopt.Parameter(source)
    source[0] = 7
    assert w.data[0] == 0
    held = w.data
    w.data = np.array([1, 2, 3], np.float32)
    assert held is w.data and list(held) == [1, 2, 3]


# -- hyperparameters are inputs -----------------------------------------------------


@pytest.mark.parametrize("kind, changes", [
    ("SGD", {"lr": 0.01, "momentum": 0.5, "dampening": 0.1, "weight_decay": 0.2}),
    ("Adam", {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.2, "lr_mult": 3.0}),
    ("AdamW", {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.3, "decay_mult": 0.5}),
    ("RMSprop", {"lr": 0.1, "alpha": 0.5, "eps": 1e-2, "momentum": 0.2, "weight_decay": 0.1}),
])
def test_changing_hyperparameters_reuses_the_session(kind, changes):
    w = _param(np.ones(4))
    start = {"SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.1), "Adam": dict(weight_decay=0.1),
             "AdamW": dict(), "RMSprop": dict(momentum=0.9, weight_decay=0.01)}[kind]
    optimizer = getattr(optim, kind)([w], **start)
    before = w.data.copy()
    for i in range(6):
        if i == 3:
            optimizer.param_groups[0].update(changes)
        w.grad = np.full(4, 0.5, np.float32)
        optimizer.step()
    assert optimizer.sessions_built == 1
    assert not np.allclose(w.data, before)


def test_lr_change_takes_effect_immediately():
    w = _param([0.0])
    optimizer = optim.SGD([w], lr=1.0)
    w.grad = np.ones(1, np.float32)
    optimizer.step()
    optimizer.param_groups[0]["lr"] = 0.25
    optimizer.step()
    np.testing.assert_allclose(w.data, [-1.25])
    assert optimizer.sessions_built == 1


def test_numpy_scalar_lr_equals_float_lr():
    results = []
    for lr in (0.05, np.float64(0.05), np.array(0.05)):
        w = _param(np.linspace(-1, 1, 4))
        optimizer = optim.Adam([w], lr=lr)
        for _ in range(3):
            w.grad = w.data.copy()
            optimizer.step()
        results.append(w.data.copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_an_lr_written_into_a_0d_array_between_steps_takes_effect():
    """A group's settings are validated and compiled again only when they change; a 0-d array can
    change without the group changing, so it is read at every step."""
    w, lr = _param([0.0]), np.array(1.0)
    optimizer = optim.SGD([w], lr=lr)
    w.grad = np.ones(1, np.float32)
    optimizer.step()
    lr[...] = 0.25
    optimizer.step()
    np.testing.assert_allclose(w.data, [-1.25])


@pytest.mark.parametrize("key, value, error", [("momentum", -0.5, ValueError), ("nesterov", 1, TypeError),
                                               ("lr", float("nan"), ValueError)])
def test_a_setting_made_invalid_after_steps_is_refused_before_anything_changes(key, value, error):
    """Settings equal to the last step's reuse its validation; a changed one (``True`` to ``1`` too)
    is validated again, and the step fails with params and state as they were."""
    w = _param([1.0, 2.0])
    optimizer = optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        w.grad = np.ones(2, np.float32)
        optimizer.step()
    before, momentum = w.data.copy(), optimizer.state[w]["momentum_buffer"].copy()
    optimizer.param_groups[0][key] = value
    with pytest.raises(error, match=key):
        optimizer.step()
    np.testing.assert_array_equal(w.data, before)
    np.testing.assert_array_equal(optimizer.state[w]["momentum_buffer"], momentum)


def test_structure_change_rebuilds_once_and_initialises_new_state():
    w = _param(np.ones(3))
    optimizer = optim.Adam([w], lr=0.1)
    w.grad = np.ones(3, np.float32)
    optimizer.step()
    optimizer.param_groups[0]["amsgrad"] = True
    optimizer.step()
    optimizer.step()
    assert optimizer.sessions_built == 2
    assert set(optimizer.state[w]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert optimizer.state[w]["step"] == 3


# -- state_dict ----------------------------------------------------------------------


def _train(optimizer, params, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(p.dtype)
        optimizer.step()


@pytest.mark.parametrize("kind, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01, amsgrad=True)), ("AdamW", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
])
def test_state_dict_round_trip_continues_identically(kind, kwargs):
    def make():
        ps = [_param(np.linspace(0, 1, 6).reshape(2, 3)), _param([0.5, -0.5])]
        return ps, getattr(optim, kind)([{"params": ps[:1]}, {"params": ps[1:], "lr_mult": 0.5}], **kwargs)

    params_a, opt_a = make()
    _train(opt_a, params_a, 5, seed=0)
    saved = opt_a.state_dict()
    saved_values = [p.data.copy() for p in params_a]
    _train(opt_a, params_a, 5, seed=1)

    params_b, opt_b = make()
    for p, values in zip(params_b, saved_values):
        p.data = values
    opt_b.load_state_dict(saved)
    _train(opt_b, params_b, 5, seed=1)
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a.data, b.data)
    assert opt_b.state[params_b[0]]["step"] == 10


def test_state_dict_holds_only_arrays_and_python_scalars():
    w = _param(np.ones(3))
    optimizer = optim.Adam([w], lr=0.1)
    w.grad = np.ones(3, np.float32)
    optimizer.step()
    saved = optimizer.state_dict()

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return isinstance(x, (np.ndarray, int, float, bool, str, type(None)))

    assert plain(saved)
    assert saved["state"][0]["step"] == 1
    assert saved["param_groups"][0]["params"] == [0]
    saved["state"][0]["exp_avg"][:] = 99  # a snapshot: changing it leaves the optimizer alone
    assert not np.any(optimizer.state[w]["exp_avg"] == 99)


def test_state_dict_file_round_trip_without_pickle(tmp_path):
    params = [_param(np.linspace(0, 1, 6).reshape(2, 3)), _param([0.5, -0.5])]
    optimizer = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr_mult": 0.5}], amsgrad=True)
    _train(optimizer, params, 3, seed=0)
    path = tmp_path / "adam.npz"
    graphopt.save_state_dict(optimizer.state_dict(), path)
    loaded = graphopt.load_state_dict(path)
    original = optimizer.state_dict()
    assert loaded["param_groups"] == original["param_groups"]
    for index, slots in original["state"].items():
        assert loaded["state"][index].keys() == slots.keys()
        for key, value in slots.items():
            np.testing.assert_array_equal(loaded["state"][index][key], value)
    optimizer.load_state_dict(loaded)  # loads back into the same layout
    with np.load(path, allow_pickle=False) as archive:  # every member is a plain array
        assert all(archive[name].dtype != object for name in archive.files)


def test_loading_a_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a graphopt state dict"):
        graphopt.load_state_dict(path)
