"""Property-based tests (hypothesis): random optimizers, settings, shapes, dtypes and gradient patterns.

Every step of graphopt's optimizers is checked against the float64 numpy reference of
tests/reference.py (written from the published formulas), and random invalid inputs must
raise and change nothing: parameters, state and step counts stay bitwise as they were, and
the next valid step gives bitwise what an optimizer that never saw the bad input gives.

The runs are derandomized (the same examples every time) and bounded for CI (about 15 s);
``GRAPHOPT_FUZZ=25 python -m pytest tests/test_properties.py`` fuzzes 25 times longer with fresh examples.
In the invalid-input test both optimizers read their state equally often, so a difference there is the
failed call's doing, not the read's (tools/repro_state_read.py shows that a read alone changes later steps).
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
from graphopt import optim
from tests.reference import ReferenceOptimizer

# GRAPHOPT_FUZZ=N runs N times the examples, freshly random each run (a longer fuzz, not for CI)
FUZZ = int(os.environ.get("GRAPHOPT_FUZZ", "0"))
PROPERTY = settings(max_examples=80 * max(1, FUZZ), deadline=None, derandomize=not FUZZ, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# per dtype: (rtol, atol) of parameters and state against the float64 reference, at every step
TOLERANCES = {np.float64: (1e-10, 1e-12), np.float32: (2e-4, 2e-5), np.float16: (2e-2, 5e-3)}

# -- strategies ----------------------------------------------------------------------


def unit(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def preprocessing() -> st.SearchStrategy[dict]:
    """The options every optimizer shares: scale, clipping (by value, by norm of group or tensor), maximize."""
    return st.fixed_dictionaries({}, optional={
        "scale": unit(0.1, 10.0), "clip_value": unit(0.05, 2.0), "clip_norm": unit(0.1, 5.0),
        "clip_per_tensor": st.booleans(), "maximize": st.booleans()})


@st.composite
def sgd_config(draw) -> dict:
    config = {"lr": draw(unit(1e-3, 0.2))}
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]) | unit(0.0, 0.99))
    if momentum:
        config["momentum"] = momentum
        if draw(st.booleans()):
            config["nesterov"] = True
        else:
            config["dampening"] = draw(unit(0.0, 0.9))
    if draw(st.booleans()):
        config["weight_decay"] = draw(unit(0.0, 0.1))
    return config


@st.composite
def adam_config(draw, wd_high: float = 0.1) -> dict:
    config = {"lr": draw(unit(1e-4, 0.1)), "betas": (draw(unit(0.0, 0.99)), draw(unit(0.5, 0.9999))),
              "amsgrad": draw(st.booleans()), "eps": draw(st.sampled_from([1e-8, 1e-6, 1e-3]))}
    if draw(st.booleans()):
        config["weight_decay"] = draw(unit(0.0, wd_high))
    return config


@st.composite
def rmsprop_config(draw) -> dict:
    # alpha >= 0.5 so that centered's s - a^2 (= alpha (1 - alpha) g^2 at step 1) does not cancel in float32
    config = {"lr": draw(unit(1e-4, 0.05)), "alpha": draw(unit(0.5, 0.999)), "centered": draw(st.booleans()),
              "eps": draw(st.sampled_from([1e-8, 1e-6, 1e-3]))}
    if draw(st.booleans()):
        config["momentum"] = draw(unit(0.0, 0.9))
    if draw(st.booleans()):
        config["weight_decay"] = draw(unit(0.0, 0.1))
    return config


CONFIG_STRATEGIES = {"SGD": sgd_config(), "Adam": adam_config(), "AdamW": adam_config(wd_high=0.5),
                     "RMSprop": rmsprop_config()}


@st.composite
def optimizer_case(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from(sorted(CONFIG_STRATEGIES)))
    return kind, {**draw(CONFIG_STRATEGIES[kind]), **draw(preprocessing())}


shapes = st.lists(st.sampled_from([1, 2, 3, 5, 7]), min_size=0, max_size=3).map(tuple)


@st.composite
def layout(draw) -> list[dict]:
    """One or two groups, each of one to three shapes; a later group may override lr, lr_mult, decay_mult."""
    groups = [{"shapes": draw(st.lists(shapes, min_size=1, max_size=3))}]
    if draw(st.booleans()):
        extra = draw(st.fixed_dictionaries({}, optional={
            "lr_mult": unit(0.0, 2.0), "decay_mult": unit(0.0, 2.0), "lr": unit(1e-3, 0.05)}))
        groups.append({"shapes": draw(st.lists(shapes, min_size=1, max_size=2)), **extra})
    return groups


@st.composite
def gradient_pattern(draw, tensors: int) -> list[list[bool]]:
    """Per step, which tensors have a gradient: all, random, or one frozen for a while then unfrozen."""
    steps = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["all", "random", "frozen_then_unfrozen"]))
    if kind == "all":
        return [[True] * tensors for _ in range(steps)]
    if kind == "random":
        return [draw(st.lists(st.booleans(), min_size=tensors, max_size=tensors)) for _ in range(steps)]
    frozen = draw(st.integers(0, tensors - 1))
    start = draw(st.integers(0, steps - 1))
    stop = draw(st.integers(start, steps))
    return [[i != frozen or not start <= t < stop for i in range(tensors)] for t in range(steps)]


# -- running graphopt and the reference side by side ------------------------------------------


def _settings(kind: str, config: dict) -> dict:
    """The full settings of a group: the optimizer's defaults overridden by ``config``."""
    probe = getattr(optim, kind)([graphopt.Parameter(np.zeros(1))], **config)
    return {k: v for k, v in probe.param_groups[0].items() if k != "params"}


def _build(kind, config, groups, dtype, rng):
    init = [[rng.standard_normal(s) for s in g["shapes"]] for g in groups]
    params = [[graphopt.Parameter(a.astype(dtype), name=f"g{i}_{j}") for j, a in enumerate(arrays)]
              for i, arrays in enumerate(init)]
    extras = [{k: v for k, v in g.items() if k != "shapes"} for g in groups]
    opt = getattr(optim, kind)([{"params": p, **e} for p, e in zip(params, extras)], **config)
    base = _settings(kind, config)
    # the reference starts from the values graphopt holds (rounded to dtype), in float64
    ref = ReferenceOptimizer(kind, [dict(base, **e, params=[p.data.astype(np.float64) for p in ps])
                                    for ps, e in zip(params, extras)])
    return opt, params, ref


def _flat(params):
    return [p for group in params for p in group]


def _step_both(opt, params, ref, has_grad, dtype, rng, magnitude):
    flat = _flat(params)
    grads = [np.asarray(magnitude * rng.standard_normal(p.shape), dtype) if has else None
             for p, has in zip(flat, has_grad)]
    for p, g in zip(flat, grads):
        p.grad = g
    opt.step()
    per_group, i = [], 0
    for group in params:
        per_group.append([None if g is None else g.astype(np.float64) for g in grads[i:i + len(group)]])
        i += len(group)
    ref.step(per_group)


def _assert_matches(opt, params, ref, dtype, where):
    rtol, atol = TOLERANCES[dtype]
    for g, group in enumerate(params):
        for i, p in enumerate(group):
            assert p.data.dtype == dtype and p.data.shape == ref.groups[g]["params"][i].shape
            scale = max(1.0, float(np.max(np.abs(ref.groups[g]["params"][i]), initial=0.0)))
            np.testing.assert_allclose(p.data, ref.groups[g]["params"][i], rtol=rtol, atol=atol * scale,
                                       err_msg=f"{where}: param {g}/{i}")
            expected, state = ref.state[g][i], opt.state.get(p, {})
            assert set(state) == set(expected), f"{where}: state keys of {g}/{i}"
            for key, value in expected.items():
                if key == "step":
                    assert state[key] == value, f"{where}: step count of {g}/{i}"
                    continue
                slot_scale = max(1.0, float(np.max(np.abs(value), initial=0.0)))
                np.testing.assert_allclose(state[key], value, rtol=rtol, atol=atol * slot_scale,
                                           err_msg=f"{where}: {g}/{i}/{key}")


def _check_run(kind, config, groups, dtype, seed, pattern_strategy, data, magnitude=1.0):
    rng = np.random.default_rng(seed)
    opt, params, ref = _build(kind, config, groups, dtype, rng)
    pattern = data.draw(pattern_strategy(len(_flat(params))), label="gradient pattern")
    for t, has_grad in enumerate(pattern):
        _step_both(opt, params, ref, has_grad, dtype, rng, magnitude)
        _assert_matches(opt, params, ref, dtype, f"{kind} {config} step {t + 1}")


MAGNITUDES = {np.float64: [1e-2, 1.0, 1e2], np.float32: [1e-3, 1.0, 1e3]}  # of the gradients drawn


@pytest.mark.parametrize("dtype", list(MAGNITUDES), ids=["float64", "float32"])
@PROPERTY
@given(case=optimizer_case(), groups=layout(), seed=st.integers(0, 2**16), data=st.data())
def test_every_step_matches_reference(dtype, case, groups, seed, data):
    kind, config = case
    magnitude = data.draw(st.sampled_from(MAGNITUDES[dtype]), label="gradient magnitude")
    _check_run(kind, config, groups, dtype, seed, gradient_pattern, data, magnitude)


@settings(PROPERTY, max_examples=30 * max(1, FUZZ))
@given(case=optimizer_case(), groups=layout(), seed=st.integers(0, 2**16), data=st.data())
def test_every_step_matches_reference_float16(case, groups, seed, data):
    """float16 (half precision, 3 decimal digits): eps raised to 1e-3, as float16 cannot hold 1e-8."""
    kind, config = case
    if kind != "SGD":
        config = dict(config, eps=1e-3)
    steps = st.integers(1, 3)
    _check_run(kind, config, groups, np.float16, seed,
               lambda tensors: steps.flatmap(lambda n: st.just([[True] * tensors] * n)), data)


# -- invalid input raises and changes nothing ------------------------------------------


def _bad_settings(kind: str) -> st.SearchStrategy[tuple[str, object]]:
    """(key, invalid value) pairs an optimizer of ``kind`` must refuse when set between steps."""
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
    real_keys = ["lr", "weight_decay", "scale", "clip_norm", "clip_value", "lr_mult", "decay_mult"]
    real_keys += {"SGD": ["momentum", "dampening"], "Adam": ["eps"], "AdamW": ["eps"],
                  "RMSprop": ["eps", "alpha", "momentum"]}[kind]
    nonnegative = ["lr", "weight_decay", "clip_norm", "clip_value", "lr_mult", "decay_mult"]
    flags = {"SGD": ["nesterov", "maximize"], "Adam": ["amsgrad", "maximize"], "AdamW": ["amsgrad", "maximize"],
             "RMSprop": ["centered", "maximize"]}[kind]
    choices = [
        st.tuples(st.sampled_from(real_keys), non_finite),
        st.tuples(st.sampled_from(real_keys), st.sampled_from(["0.1", None, [0.1], True])),
        st.tuples(st.sampled_from(nonnegative), unit(-1e3, -1e-6)),
        st.tuples(st.sampled_from(flags), st.sampled_from([1, 0, None, "yes", 0.5])),
    ]
    if kind in ("Adam", "AdamW"):
        out_of_range = unit(-1.0, -1e-6) | unit(1.0, 10.0) | non_finite
        choices.append(st.tuples(st.just("betas"), st.tuples(out_of_range, st.just(0.999)) |
                                 st.tuples(st.just(0.9), out_of_range) | st.just((0.9,)) | st.just("0.9")))
    if kind == "RMSprop":
        choices.append(st.tuples(st.just("alpha"), unit(1.0, 10.0) | unit(-1.0, -1e-6)))
    return st.one_of(choices)


@st.composite
def bad_input(draw, kind: str, shape: tuple) -> tuple:
    """A bad hyperparameter, or a gradient of the wrong shape or dtype (set or slipped past the setter)."""
    what = draw(st.sampled_from(["setting", "grad_shape", "grad_dtype"]))
    if what == "setting":
        return ("setting", *draw(_bad_settings(kind)))
    if what == "grad_shape":
        other = draw(shapes.filter(lambda s: s != shape))
        return ("grad", np.ones(other, np.float32), draw(st.booleans()))
    dtype = draw(st.sampled_from([np.float64, np.float16, np.int32, np.complex64, np.bool_]))
    return ("grad", np.ones(shape, dtype), draw(st.booleans()))


def _state_snapshot(opt, params):
    return [p.data.tobytes() for p in params], copy.deepcopy(opt.state_dict())


def _assert_bitwise_equal(before, after):
    (data_a, state_a), (data_b, state_b) = before, after
    assert data_a == data_b, "parameters changed"
    assert state_a["state"].keys() == state_b["state"].keys()
    for i, slots in state_a["state"].items():
        assert slots.keys() == state_b["state"][i].keys()
        for key, value in slots.items():
            other = state_b["state"][i][key]
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and value.tobytes() == other.tobytes(), f"state {i}/{key} changed"
            else:
                assert value == other, f"state {i}/{key} changed ({value!r} -> {other!r})"
    assert state_a["param_groups"] == state_b["param_groups"]


def _twins(kind, config, shape_list):
    """Two optimizers over equal parameters: one to be fed bad input, one that never sees it."""
    rng = np.random.default_rng(0)
    init = [np.asarray(rng.standard_normal(s), np.float32) for s in shape_list]
    pairs = []
    for _ in range(2):
        params = [graphopt.Parameter(a.copy(), name=f"w{i}") for i, a in enumerate(init)]
        pairs.append((getattr(optim, kind)(params, **config), params))
    return pairs


@PROPERTY
@given(case=optimizer_case(), shape_list=st.lists(shapes, min_size=1, max_size=3), warm=st.integers(0, 2),
       data=st.data())
def test_invalid_input_raises_and_changes_nothing(case, shape_list, warm, data):
    kind, config = case
    (opt, params), (twin, twin_params) = _twins(kind, config, shape_list)
    rng = np.random.default_rng(1)

    def feed(grads):
        for optimizer, ps in ((opt, params), (twin, twin_params)):
            for p, g in zip(ps, grads):
                p.grad = g
            optimizer.step()

    for _ in range(warm):
        feed([np.asarray(rng.standard_normal(s), np.float32) for s in shape_list])
    victim = data.draw(st.integers(0, len(params) - 1), label="victim")
    bad = data.draw(bad_input(kind, params[victim].shape), label="bad input")
    grads = [np.asarray(rng.standard_normal(s), np.float32) for s in shape_list]
    for p, g in zip(params, grads):
        p.grad = g
    before = _state_snapshot(opt, params)
    _state_snapshot(twin, twin_params)  # both read their state equally often
    if bad[0] == "setting":
        _, key, value = bad
        good = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        with pytest.raises((ValueError, TypeError), match=rf"param group 0.*{key}"):
            opt.step()
        opt.param_groups[0][key] = good  # the bad value the caller wrote is the caller's; then compare
        _assert_bitwise_equal(before, _state_snapshot(opt, params))
    else:
        _, grad, slip_past_setter = bad
        name = params[victim].name
        if slip_past_setter:
            params[victim]._grad = grad  # as a caller writing into the private slot would
            with pytest.raises((ValueError, TypeError), match=name):
                opt.step()
        else:
            with pytest.raises((ValueError, TypeError), match=name):
                params[victim].grad = grad
        _assert_bitwise_equal(before, _state_snapshot(opt, params))
        params[victim].grad = grads[victim]
    # after the failure, the next valid step is bitwise the step of an optimizer that never saw it
    feed(grads)
    _assert_bitwise_equal(_state_snapshot(twin, twin_params), _state_snapshot(opt, params))


@PROPERTY
@given(case=optimizer_case(), data=st.data())
def test_invalid_setting_at_construction_or_new_group_is_refused(case, data):
    kind, config = case
    key, value = data.draw(_bad_settings(kind), label="bad setting")
    with pytest.raises((ValueError, TypeError), match=key):
        getattr(optim, kind)([graphopt.Parameter(np.zeros(3, np.float32))], **{**config, key: value})
    opt = getattr(optim, kind)([graphopt.Parameter(np.zeros(3, np.float32))], **config)
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    with pytest.raises((ValueError, TypeError), match=rf"param group 1.*{key}"):
        opt.add_param_group({"params": [graphopt.Parameter(np.zeros(2, np.float32))], key: value})
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
