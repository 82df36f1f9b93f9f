"""Every optimizer and option against the numpy reference, step by step, state by state.

Each configuration runs 24 steps over two param groups (the second with ``lr_mult``
and ``decay_mult``), with a step in which some gradients are None, a frozen-then-
unfrozen parameter, and a change of hyperparameters half way.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import graphopt
from graphopt import optim
from graphopt.runtime import Runtime
from tests.reference import ReferenceOptimizer

STEPS = 24
SHAPES = [(3, 4), (5,), (), (4, 5)]

CONFIGS = {
    "SGD": [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.1, momentum=0.9, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.1, weight_decay=0.1),
        dict(lr=0.1, momentum=0.5, weight_decay=0.05, maximize=True),
        dict(lr=0.1, scale=0.5, clip_norm=0.8),
        dict(lr=0.1, clip_norm=0.5, clip_per_tensor=True, momentum=0.9),
        dict(lr=0.1, clip_value=0.3, momentum=0.9),
    ],
    "Adam": [
        dict(),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, maximize=True, betas=(0.8, 0.99)),
        dict(lr=0.01, amsgrad=True, weight_decay=0.05, scale=2.0, clip_norm=1.0, eps=1e-6),
    ],
    "AdamW": [
        dict(),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.1, maximize=True, clip_value=0.5),
    ],
    "RMSprop": [
        dict(),
        dict(lr=0.01, centered=True),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1),
        dict(lr=0.01, maximize=True, alpha=0.9, eps=1e-4, clip_norm=0.5, clip_per_tensor=True),
    ],
}

CASES = [(kind, config) for kind, configs in CONFIGS.items() for config in configs]


def _case_id(case):
    kind, config = case
    return kind + "-" + ("-".join(f"{k}={v}" for k, v in config.items()) or "defaults")


def _settings(kind, config):
    """The full settings of a group: the optimizer's defaults overridden by ``config``."""
    probe = getattr(optim, kind)([graphopt.Parameter(np.zeros(1))], **config)
    return {k: v for k, v in probe.param_groups[0].items() if k != "params"}


def _grads(rng, arrays, dtype, missing=()):
    return [None if i in missing else rng.standard_normal(a.shape).astype(dtype) for i, a in enumerate(arrays)]


def _change_hypers(kind, group):
    """A mid-run change of values (never of structure): lr always, others per optimizer."""
    group["lr"] = group["lr"] * 0.3
    if kind == "SGD" and group["momentum"]:
        group["momentum"] = 0.6
    if kind in ("Adam", "AdamW"):
        group["betas"] = (0.85, 0.995)
    if kind == "RMSprop":
        group["alpha"] = 0.95


RUNTIMES = {
    "default": dict,
    # rows of 16 elements, split between 3 threads: tensors straddle rows, the last row is padded
    "rows16x3": lambda: dict(runtime=Runtime(chunk_size=16, threads=3)),
    # state in buffers ONNX Runtime allocates, bound by pointer: the code path a GPU takes
    "device_buffers": lambda: dict(runtime=Runtime(chunk_size=16, threads=2, device_buffers=True)),
}


def run_both(kind, config, dtype, rng, runtime="default"):
    """Run graphopt and the reference side by side; yield their params and states per step."""
    init = [[rng.standard_normal(s) for s in SHAPES], [rng.standard_normal(s) for s in SHAPES[:2]]]
    params = [[graphopt.Parameter(a.astype(dtype)) for a in arrays] for arrays in init]
    multipliers = dict(lr_mult=0.5, decay_mult=2.0)
    opt = getattr(optim, kind)([{"params": params[0]}, {"params": params[1], **multipliers}], **config,
                               **RUNTIMES[runtime]())
    settings = _settings(kind, config)
    ref = ReferenceOptimizer(kind, [dict(settings, params=list(init[0])),
                                    dict(settings, params=list(init[1]), **multipliers)])
    for step in range(STEPS):
        missing = {7: (0, 2), 8: (0,)}.get(step, ())  # params[0][0] is skipped twice, then resumes
        # (group 0 then takes the per-tensor path, its step counts differing; group 1 stays chunked)
        grads = [_grads(rng, init[0], dtype, missing), _grads(rng, init[1], dtype)]
        if step == 12:
            opt.sessions_before_change = opt.sessions_built
            for group, ref_group in zip(opt.param_groups, ref.groups):
                _change_hypers(kind, group)
                _change_hypers(kind, ref_group)
        for group_params, group_grads in zip(params, grads):
            for p, g in zip(group_params, group_grads):
                p.grad = g
        opt.step()
        ref.step([[None if g is None else g.astype(np.float64) for g in gg] for gg in grads])
        yield opt, params, ref


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_reference_float64(case, runtime):
    kind, config = case
    rng = np.random.default_rng(0)
    for opt, params, ref in run_both(kind, config, np.float64, rng, runtime):
        for g, group_params in enumerate(params):
            for i, p in enumerate(group_params):
                np.testing.assert_allclose(p.data, ref.groups[g]["params"][i], rtol=1e-10, atol=1e-12)
                ref_state = ref.state[g][i]
                state = opt.state.get(p, {})
                assert set(state) == set(ref_state), (g, i)
                for key, value in ref_state.items():
                    np.testing.assert_allclose(state[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{g}/{i}/{key}")
    assert opt.sessions_built == opt.sessions_before_change  # changing hyperparameters compiled nothing


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_reference_float32(case):
    kind, config = case
    rng = np.random.default_rng(1)
    for opt, params, ref in run_both(kind, config, np.float32, rng):
        pass
    for g, group_params in enumerate(params):
        for i, p in enumerate(group_params):
            assert p.data.dtype == np.float32
            np.testing.assert_allclose(p.data, ref.groups[g]["params"][i], rtol=2e-4, atol=2e-5)


def test_reference_state_is_copied_not_shared():
    """The reference must not alias graphopt's arrays (a sanity check of the harness)."""
    rng = np.random.default_rng(2)
    *_, (opt, params, ref) = run_both("Adam", {}, np.float64, rng)
    assert all(p.data is not r for p, r in zip(params[0], ref.groups[0]["params"]))
    assert copy.deepcopy(ref.state)[0][1]["step"] == STEPS
