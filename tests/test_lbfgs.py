"""LBFGS against torch.optim.LBFGS over torch's configuration set (``optim_inputs_func_lbfgs``).

Both minimize the same objective with the same closure: its loss and gradient are computed in
numpy (an L2-regularized logistic regression over both parameters flattened: smooth, convex
and well conditioned, so rounding differences shrink instead of growing as they do along
Rosenbrock's valley), and the two differ only in the optimizer's arithmetic. Each run: 20
steps of up to ``max_iter`` iterations, one step with a parameter whose gradient is None
(zeros, as torch reads it), ``lr`` changed half way, float32 and float64; the loss, the
parameters and every state entry compared after each step.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import optim

SHAPES = [(2, 3), (4,)]
STEPS = 20
NONE_STEP, LR_STEP = 2, 10
TENSOR_LR = "tensor lr"
CONFIGS = [dict(), dict(lr=0.01), dict(lr=TENSOR_LR), dict(tolerance_grad=1e-6),  # torch 2.13's set, in order
           dict(line_search_fn="strong_wolfe")]
EXTRA = [dict(history_size=3, max_iter=7), dict(line_search_fn="strong_wolfe", history_size=2, max_eval=9, lr=0.5),
         dict(line_search_fn="strong_wolfe", lr=10)]  # steps too long: the search zooms
# Steps too short (extrapolation by cubic interpolation), and a search cut short: float64 only. Their searches
# test sufficient decrease, f_new > f + 1e-4 * t * (g . d), with 1e-4 * t * (g . d) below float32's resolution
# of the loss, so in float32 those tests are ties of rounded losses, decided differently by any two implementations.
FLOAT64_ONLY = [dict(line_search_fn="strong_wolfe", lr=0.05), dict(line_search_fn="strong_wolfe", lr=30, max_eval=6)]
CASES = [(c, d) for c in CONFIGS + EXTRA for d in (np.float64, np.float32)] + [(c, np.float64) for c in FLOAT64_ONLY]


_DATA = np.random.default_rng(7).standard_normal((40, 10))
_LABELS = np.where(_DATA @ np.linspace(-1, 1, 10) + 0.3 * np.random.default_rng(8).standard_normal(40) > 0, 1.0, -1.0)
DECAY = 0.1


def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
    """``mean(log(1 + exp(-y * (A x)))) + DECAY / 2 * |x|^2`` and its gradient, in ``x``'s dtype."""
    data, labels = _DATA.astype(x.dtype), _LABELS.astype(x.dtype)
    margins = labels * (data @ x)
    loss = np.mean(np.logaddexp(0, -margins)) + DECAY / 2 * np.dot(x, x)
    weights = -labels / (1 + np.exp(margins)) / len(labels)
    return float(loss), (data.T @ weights + x.dtype.type(DECAY) * x).astype(x.dtype)


def _closure(values, assign, skip):
    """A closure over parameters read by ``values()``; ``assign(i, grad or None)`` sets gradients."""
    def closure():
        flat = np.concatenate([v.ravel() for v in values()])
        loss, grad = objective(flat)
        parts = np.split(grad, np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1])
        for i, (part, shape) in enumerate(zip(parts, SHAPES)):
            assign(i, None if i in skip() else part.reshape(shape))
        return loss
    return closure


def _ours_and_torch(torch, config):
    ours = {k: float(torch.tensor(0.001)) if v == TENSOR_LR else v for k, v in config.items()}
    theirs = {k: torch.tensor(0.001) if v == TENSOR_LR else v for k, v in config.items()}
    return ours, theirs


def _close(got, want, rtol, atol, what):
    """``|got - want| <= rtol |want| + atol`` in the L2 norm (vectors, or scalars)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, torch's {want.shape}"
    error, bound = np.linalg.norm(got - want), rtol * np.linalg.norm(want) + atol
    assert error <= bound, f"{what}: differs from torch's by {error:.3g} > {bound:.3g}"


def _compare_state(mine, theirs, rtol, atol, where):
    """Every entry of torch's state (``al``, torch's scratch list, aside); ``rtol`` relative to each vector's norm."""
    assert set(mine) <= set(theirs) and set(theirs) - set(mine) <= {"al"}, where
    for key, value in theirs.items():
        if key == "al":
            continue
        got = mine[key]
        if isinstance(value, list):
            assert len(got) == len(value), f"{where}: {key} has {len(got)} entries, torch {len(value)}"
            for i, (a, b) in enumerate(zip(got, value)):
                _close(a, b.numpy() if hasattr(b, "numpy") else b, rtol, atol, f"{where} {key}[{i}]")
        elif key in ("func_evals", "n_iter"):
            assert got == value, f"{where}: {key} {got} != torch's {value}"
        else:
            _close(got, value.numpy() if hasattr(value, "numpy") else value, rtol, atol, f"{where} {key}")


@pytest.mark.parametrize("config, dtype", CASES, ids=[("-".join(f"{k}={v}" for k, v in c.items()) or "default")
                                                   + f"-{np.dtype(d).name}" for c, d in CASES])
def test_matches_torch_lbfgs(config, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init = [(rng.standard_normal(s) * 0.5).astype(dtype) for s in SHAPES]
    ours = [graphopt.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    if dtype == np.float32:
        # float32 resolves the loss (~0.4) only to 3e-8, so torch's default tolerance_change (1e-9) stops a run
        # on an exact tie of two losses, decided by their last bits: a coin toss between two implementations
        # whose arithmetic differs in rounding. 1e-5 makes every stopping test a comparison float32 resolves.
        config = {"tolerance_change": 1e-5, **config}
    mine, torch_config = _ours_and_torch(torch, config)
    opt = optim.LBFGS(ours, **mine)
    ref = torch.optim.LBFGS(theirs, **torch_config)
    step = [0]
    skip = lambda: {1} if step[0] == NONE_STEP else set()  # noqa: E731

    def set_ours(i, g):
        ours[i].grad = g

    def set_theirs(i, g):
        theirs[i].grad = None if g is None else torch.from_numpy(g.copy())

    ours_closure = _closure(lambda: [p.data for p in ours], set_ours, skip)
    torch_closure = _closure(lambda: [q.detach().numpy() for q in theirs], set_theirs, skip)
    rtol, atol = (1e-9, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    # state in float32: near the minimum the closure's float32 gradient is small against the terms it sums
    # (cancellation), so a last-bit difference of the parameters moves it, and the differences ``y`` and the
    # directions built from it, by up to ~1% (they step the parameters by t * d, which are compared tightly)
    state_rtol = rtol if dtype == np.float64 else 1e-2
    for step[0] in range(STEPS):
        if step[0] == LR_STEP:
            # a new value, not torch's in-place ``*=``: torch's state["t"] *is* a tensor lr after the first
            # iteration, so scaling that tensor in place would rewrite the step length torch remembers
            for group in (*opt.param_groups, *ref.param_groups):
                group["lr"] = group["lr"] * 0.5
        loss = opt.step(ours_closure)
        expected = ref.step(torch_closure)
        assert loss == pytest.approx(float(expected), rel=rtol, abs=atol)
        for k, (p, q) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=atol,
                                       err_msg=f"params[{k}] after step {step[0]}")
        _compare_state(opt.state[ours[0]], ref.state[theirs[0]], state_rtol, atol, f"state after step {step[0]}")
    final = objective(np.concatenate([p.data.ravel() for p in ours]).astype(np.float64))[0]
    assert final < objective(np.concatenate([a.ravel() for a in init]).astype(np.float64))[0]  # it did minimize


def _run(opt, params, steps):
    closure = _closure(lambda: [p.data for p in params], lambda i, g: setattr(params[i], "grad", g), set)
    for _ in range(steps):
        opt.step(closure)


@pytest.mark.parametrize("config", [dict(history_size=3), dict(line_search_fn="strong_wolfe")], ids=["plain", "wolfe"])
def test_state_dict_round_trip_mid_run_equals_uninterrupted(config):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) * 0.5 for s in SHAPES]
    whole = [graphopt.Parameter(a.copy()) for a in init]
    first = [graphopt.Parameter(a.copy()) for a in init]
    _run(optim.LBFGS(whole, max_iter=3, **config), whole, 6)
    before = optim.LBFGS(first, max_iter=3, **config)
    _run(before, first, 3)
    saved = before.state_dict()
    resumed = [graphopt.Parameter(p.data.copy()) for p in first]
    after = optim.LBFGS(resumed, max_iter=3, **config)
    after.load_state_dict(saved)
    _run(after, resumed, 3)
    for p, q in zip(whole, resumed):
        np.testing.assert_array_equal(q.data, p.data)


@pytest.mark.parametrize("config, key", [(dict(lr=-1.0), "'lr'"), (dict(max_iter=0), "'max_iter'"),
                                         (dict(max_eval=2.5), "'max_eval'"), (dict(history_size=0), "'history_size'"),
                                         (dict(tolerance_grad=-1.0), "'tolerance_grad'"),
                                         (dict(tolerance_change=float("inf")), "'tolerance_change'"),
                                         (dict(line_search_fn="armijo"), "'line_search_fn'")])
def test_bad_settings_raise_naming_the_key(config, key):
    with pytest.raises(ValueError, match=key):
        optim.LBFGS([graphopt.Parameter(np.zeros(3))], **config)


def test_needs_a_closure_one_group_and_one_dtype():
    p = graphopt.Parameter(np.zeros(3))
    opt = optim.LBFGS([p])
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="parameter groups"):
        opt.add_param_group({"params": [graphopt.Parameter(np.zeros(2))]})
    with pytest.raises(ValueError, match="one dtype"):
        optim.LBFGS([graphopt.Parameter(np.zeros(3)), graphopt.Parameter(np.zeros(2, np.float32))])
    with pytest.raises(NotImplementedError, match="outside ONNX"):
        opt.export()


def test_load_state_dict_refuses_vectors_of_another_size():
    p = graphopt.Parameter(np.full(3, 0.5))
    opt = optim.LBFGS([p], max_iter=2)
    opt.step(lambda: _set_and_loss(p))
    saved = opt.state_dict()
    saved["state"][0]["d"] = np.zeros(5)
    with pytest.raises(ValueError, match="'d'"):
        opt.load_state_dict(saved)
    with pytest.raises(ValueError, match="from Adam"):
        opt.load_state_dict({**opt.state_dict(), "class": "Adam"})


def _set_and_loss(p):
    p.grad = 2 * (p.data - 1)
    return float(np.sum((p.data - 1) ** 2))


def test_a_trainer_refuses_it_clearly():
    from tests.test_trainer import regression_model

    trainer = graphopt.Trainer(regression_model(), loss="loss", optimizer=optim.LBFGS())
    with pytest.raises(NotImplementedError, match="step\\(closure\\)"):
        trainer.step({"x": np.ones((2, 3)), "t": np.ones((2, 2))})
