"""Lion and Signum against float64 numpy references written from their papers; and, for every
optimizer added with them (Adagrad, Adadelta, Adamax, RAdam, Rprop too), the chunked fast path,
a bit-exact state_dict round trip, the update inside a Trainer's training step and clear
errors for bad settings.

Lion: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2.
Signum: Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex Problems",
with the weight decay of the authors' implementation (MXNet's ``Signum``: ``wd`` added to the
gradient, ``wd_lh`` decoupled).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import graphopt
from graphopt import optim
from graphopt.runtime import Runtime
from tests.plans import plans_taken
from tests.reference import lr_of, preprocess, wd_of
from tests.test_trainer import numpy_gradients, regression_model

STEPS = 24
SHAPES = [(3, 4), (5,), (), (4, 5)]


def lion(p, g, state, group):
    """Algorithm 2: c = b1 m + (1 - b1) g; p <- p - lr (sign(c) + wd p); m <- b2 m + (1 - b2) g."""
    state["step"] = state.get("step", 0) + 1
    b1, b2 = group["betas"]
    m = state.get("exp_avg", np.zeros_like(p))
    c = b1 * m + (1 - b1) * g
    p = p - lr_of(group) * (np.sign(c) + wd_of(group) * p)
    state["exp_avg"] = b2 * m + (1 - b2) * g
    return p


def signum(p, g, state, group):
    """Signum: m <- b m + (1 - b) g; p <- p - lr sign(m) (signSGD: sign(g) when b = 0); weight
    decay added to g (MXNet's wd) or, decoupled, p <- (1 - lr wd) p (MXNet's wd_lh)."""
    state["step"] = state.get("step", 0) + 1
    lr, wd = lr_of(group), wd_of(group)
    if group["decoupled_weight_decay"]:
        p = (1 - lr * wd) * p
    else:
        g = g + wd * p
    if group["momentum"]:
        state["momentum_buffer"] = group["momentum"] * state.get("momentum_buffer", np.zeros_like(p)) \
            + (1 - group["momentum"]) * g
        g = state["momentum_buffer"]
    return p - lr * np.sign(g)


REFERENCES = {"Lion": lion, "Signum": signum}
CONFIGS = {
    "Lion": [
        dict(),
        dict(lr=0.01, betas=(0.95, 0.98), weight_decay=0.5),
        dict(lr=0.01, weight_decay=0.1, maximize=True, clip_value=0.5),
        dict(lr=0.01, scale=2.0, clip_norm=1.0),
        dict(lr=0.01, clip_norm=0.5, clip_per_tensor=True, betas=(0.0, 0.5)),
    ],
    "Signum": [
        dict(),
        dict(lr=0.01, momentum=0.0),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
        dict(lr=0.01, momentum=0.5, scale=0.5, clip_norm=0.8, clip_value=0.3),
        dict(lr=0.01, clip_norm=0.5, clip_per_tensor=True, weight_decay=0.05),
    ],
}
CASES = [(kind, config) for kind, configs in CONFIGS.items() for config in configs]


def _case_id(case):
    kind, config = case
    return kind + "-" + ("-".join(f"{k}={v}" for k, v in config.items()) or "defaults")


def _settings(kind, config):
    probe = getattr(optim, kind)([graphopt.Parameter(np.zeros(1))], **config)
    return {k: v for k, v in probe.param_groups[0].items() if k != "params"}


def _run(kind, config, dtype, runtime=None):
    """graphopt and the reference side by side over two groups (the second with ``lr_mult`` and
    ``decay_mult``): a step with missing gradients, a parameter frozen then unfrozen, ``lr`` and
    ``betas`` / ``momentum`` changed half way. Yields per step."""
    rng = np.random.default_rng(0)
    init = [[rng.standard_normal(s) for s in SHAPES], [rng.standard_normal(s) for s in SHAPES[:2]]]
    params = [[graphopt.Parameter(a.astype(dtype)) for a in arrays] for arrays in init]
    multipliers = dict(lr_mult=0.5, decay_mult=2.0)
    extra = {} if runtime is None else dict(runtime=runtime)
    opt = getattr(optim, kind)([{"params": params[0]}, {"params": params[1], **multipliers}], **config, **extra)
    settings = _settings(kind, config)
    groups = [dict(settings, params=list(init[0])), dict(settings, params=list(init[1]), **multipliers)]
    states = [[{} for _ in g["params"]] for g in groups]
    for step in range(STEPS):
        missing = {7: (0, 2), 8: (0,), 9: (0,)}.get(step, ())
        grads = [[None if i in missing else rng.standard_normal(a.shape) for i, a in enumerate(init[0])],
                 [rng.standard_normal(a.shape) for a in init[1]]]
        grads = [[None if g is None else g.astype(dtype) for g in gg] for gg in grads]
        if step == 12:
            for group in (*opt.param_groups, *groups):
                group["lr"] *= 0.3
                if kind == "Lion":
                    group["betas"] = (0.85, 0.97)
                elif group["momentum"]:
                    group["momentum"] = 0.7
        for group_params, group_grads in zip(params, grads):
            for p, g in zip(group_params, group_grads):
                p.grad = g
        opt.step()
        for group, group_grads, group_states in zip(groups, grads, states):
            active = [i for i, g in enumerate(group_grads) if g is not None]
            processed = preprocess([group_grads[i].astype(np.float64) for i in active], group)
            for i, g in zip(active, processed):
                group["params"][i] = REFERENCES[kind](group["params"][i], g, group_states[i], group)
        yield opt, params, groups, states


@pytest.mark.parametrize("runtime", [None, "rows16x3"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_paper_reference_float64(case, runtime):
    kind, config = case
    rt = Runtime(chunk_size=16, threads=3) if runtime else None
    for step, (opt, params, groups, states) in enumerate(_run(kind, config, np.float64, rt)):
        for g, group_params in enumerate(params):
            for i, p in enumerate(group_params):
                where = f"step {step}, group {g}, params[{i}]"
                np.testing.assert_allclose(p.data, groups[g]["params"][i], rtol=1e-10, atol=1e-12, err_msg=where)
                state = opt.state.get(p, {})
                assert set(state) == set(states[g][i]), where
                for key, value in states[g][i].items():
                    np.testing.assert_allclose(state[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{where}: {key}")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_paper_reference_float32(case):
    kind, config = case
    *_, (opt, params, groups, states) = _run(kind, config, np.float32)
    for g, group_params in enumerate(params):
        for i, p in enumerate(group_params):
            assert p.data.dtype == np.float32
            np.testing.assert_allclose(p.data, groups[g]["params"][i], rtol=2e-5, atol=2e-6)


# -- every new optimizer ---------------------------------------------------------------------

ALL = {
    "Adagrad": dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2),
    "Adadelta": dict(rho=0.95, weight_decay=0.1),
    "Adamax": dict(lr=0.01, weight_decay=0.1),
    "RAdam": dict(weight_decay=0.1, decoupled_weight_decay=True),
    "Rprop": dict(lr=0.01, etas=(0.4, 1.3)),
    "Lion": dict(lr=0.01, weight_decay=0.1),
    "Signum": dict(lr=0.01, weight_decay=0.1),
}



@pytest.mark.parametrize("kind", list(ALL))
def test_full_groups_take_the_chunked_path(kind, monkeypatch):
    rng = np.random.default_rng(0)
    params = [graphopt.Parameter(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
    opt = getattr(optim, kind)(params, runtime=Runtime(chunk_size=16, threads=2), **ALL[kind])
    taken = plans_taken(monkeypatch)
    for _ in range(8):  # RAdam switches to its rectified update at step 6: still one graph
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
    assert taken == ["_ChunkedPlan"] * 8
    assert opt.sessions_built == 1


def _gradient_steps(rng):
    steps = []
    for step in range(20):
        missing = {1} if step == 3 else {0} if 6 <= step <= 8 else set()
        steps.append([None if i in missing else rng.standard_normal(s) for i, s in enumerate(SHAPES)])
    return steps


def _make(kind, init):
    params = [graphopt.Parameter(a.copy()) for a in init]
    opt = getattr(optim, kind)([{"params": params[:3]}, {"params": params[3:], "lr_mult": 0.5}],
                               runtime=Runtime(chunk_size=16, threads=2), **ALL[kind])
    return params, opt


def _steps(params, opt, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("kind", list(ALL))
def test_state_dict_round_trip_mid_run_continues_bit_for_bit(kind):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = _gradient_steps(rng)
    params, opt = _make(kind, init)
    _steps(params, opt, grads)
    half, first = _make(kind, init)
    _steps(half, first, grads[:7])  # stopped while params[0] is frozen (its step count behind)
    saved = first.state_dict()
    resumed, second = _make(kind, [p.data for p in half])
    second.load_state_dict(saved)
    _steps(resumed, second, grads[7:])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(q.data, p.data)
        assert opt.state[p].keys() == second.state[q].keys()
        for key, value in opt.state[p].items():
            np.testing.assert_array_equal(second.state[q][key], value, err_msg=key)


@pytest.mark.parametrize("kind", list(ALL))
def test_trainer_step_equals_gradients_plus_optimizer_step(kind):
    """Inside a Trainer's one-call training step, the update equals the facade's fed the same
    gradients (computed by hand)."""
    model = regression_model()
    trainer = graphopt.Trainer(model, loss="loss", optimizer=getattr(optim, kind)(**ALL[kind]))
    mirror = {t.name: graphopt.Parameter(numpy_helper.to_array(t).copy(), name=t.name) for t in model.graph.initializer}
    reference = getattr(optim, kind)(list(mirror.values()), **ALL[kind])
    rng = np.random.default_rng(1)
    for _ in range(8):
        x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
        grads, expected_loss = numpy_gradients({n: p.data for n, p in mirror.items()}, x, t)
        assert trainer.step({"x": x, "t": t}) == pytest.approx(expected_loss, rel=1e-10)
        for name, p in mirror.items():
            p.grad = grads[name]
        reference.step()
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, mirror[name].data, rtol=1e-9, atol=1e-12)
    assert trainer.optimizer.sessions_built == (2 if trainer.fused_update else 1)  # the first step's, no more


BAD = [
    ("Adagrad", dict(lr_decay=-0.5), ValueError, "'lr_decay' must be >= 0"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), ValueError, "'initial_accumulator_value' must be >= 0"),
    ("Adagrad", dict(eps=float("nan")), ValueError, "'eps' must be finite"),
    ("Adadelta", dict(rho=1.1), ValueError, r"'rho' must be in \[0, 1\]"),
    ("Adadelta", dict(lr=-1.0), ValueError, "'lr' must be >= 0"),
    ("Adamax", dict(betas=(0.0, 1.0)), ValueError, r"'betas\[1\]' must be in \[0, 1\)"),
    ("Adamax", dict(betas=0.9), ValueError, "'betas' must be a pair"),
    ("RAdam", dict(betas=(1.0, 0.0)), ValueError, r"'betas\[0\]' must be in \[0, 1\)"),
    ("RAdam", dict(weight_decay=-1), ValueError, "'weight_decay' must be >= 0"),
    ("RAdam", dict(decoupled_weight_decay="yes"), TypeError, "'decoupled_weight_decay' must be True or False"),
    ("Rprop", dict(etas=(1.0, 0.5)), ValueError, "'etas' must satisfy 0 < etaminus < 1 < etaplus"),
    ("Rprop", dict(step_sizes=(1.0, 0.5)), ValueError, "'step_sizes' must satisfy 0 <= step_size_min"),
    ("Rprop", dict(step_sizes=("a", 1.0)), TypeError, r"'step_sizes\[0\]' must be a real number"),
    ("Lion", dict(betas=(0.9, 1.0)), ValueError, r"'betas\[1\]' must be in \[0, 1\)"),
    ("Lion", dict(weight_decay=-0.1), ValueError, "'weight_decay' must be >= 0"),
    ("Signum", dict(momentum=1.0), ValueError, r"'momentum' must be in \[0, 1\)"),
    ("Signum", dict(clip_norm=-1.0), ValueError, "'clip_norm' must be >= 0"),
]


@pytest.mark.parametrize("kind, config, error, message", BAD, ids=[f"{k}-{list(c)[0]}" for k, c, *_ in BAD])
def test_bad_settings_raise_naming_group_and_key(kind, config, error, message):
    with pytest.raises(error, match=f"{kind} param group 0: {message}"):
        getattr(optim, kind)([graphopt.Parameter(np.zeros(3))], **config)
    opt = getattr(optim, kind)([graphopt.Parameter(np.zeros(3))])  # the same value set later: raises at step
    p = graphopt.Parameter(np.ones(2))
    opt.add_param_group({"params": [p]})
    opt.param_groups[1].update(config)
    p.grad = np.ones(2)
    with pytest.raises(error, match=f"{kind} param group 1: {message}"):
        opt.step()
    np.testing.assert_array_equal(p.data, 1.0)


@pytest.mark.parametrize("kind", ["Adagrad", "Adadelta", "Adamax", "RAdam", "Rprop"])
def test_differentiable_is_not_supported(kind):
    with pytest.raises(NotImplementedError, match=f"{kind}: differentiable=True"):
        getattr(optim, kind)([graphopt.Parameter(np.zeros(3))], differentiable=True)


@pytest.mark.parametrize("kind, slot", [("Adagrad", "sum"), ("Adadelta", "acc_delta")])
def test_negative_sums_of_squares_are_refused_on_load(kind, slot):
    p = graphopt.Parameter(np.zeros(3))
    opt = getattr(optim, kind)([p])
    p.grad = np.ones(3)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0][slot] = np.array([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=f"slot '{slot}' is an average of squares and must be >= 0"):
        opt.load_state_dict(saved)
