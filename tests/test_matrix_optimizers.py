"""Muon, LAMB, LARS and SparseAdam: optimizers that need per-tensor norms, matrix products or masks.

Muon and SparseAdam against torch.optim over torch's own configuration sets
(``optim_inputs_func_muon`` / ``_sparseadam``); LAMB and LARS against float64 numpy references
written from their papers. Each run: 20+ steps over two param groups (the second with
``lr_mult``/``decay_mult``), one step in which a tensor has no gradient, a tensor frozen for
several steps then unfrozen, and ``lr`` changed half way; float32 and float64; parameters and state.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import optim
from graphopt.symbolic import Graph, GraphBuildError, matmul, transpose
from tests.reference import lr_of, preprocess, wd_of

STEPS = 22
NONE_STEP, FROZEN, LR_STEP = 4, range(7, 11), 12  # step with params[1] gradient-less; params[0] frozen; lr change
TOLERANCES = {np.float64: (1e-10, 1e-12), np.float32: (2e-5, 2e-6)}


def _missing(step: int) -> set[int]:
    return ({1} if step == NONE_STEP else set()) | ({0} if step in FROZEN else set())


def _grads(rng, shapes, dtype, step):
    return [None if i in _missing(step) else rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)]


# -- numpy float64 references, written from the papers ------------------------------------------


def lamb(p, g, state, group):
    """You et al. 2020, Algorithm 2 (bias-corrected), decoupled weight decay in the direction."""
    t = state["step"] = state.get("step", 0) + 1
    b1, b2 = group["betas"]
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * p) + (1 - b1) * g
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * p) + (1 - b2) * g * g
    r = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + group["eps"])
    u = r + wd_of(group) * p
    p_norm, u_norm = float(np.linalg.norm(p)), float(np.linalg.norm(u))
    if group["clamp_value"]:
        p_norm = min(p_norm, group["clamp_value"])
    ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
    return p - lr_of(group) * ratio * u


def lars(p, g, state, group):
    """You et al. 2017, Algorithm 1, with lr outside the momentum buffer (Dragon, torch's SGD)."""
    state["step"] = state.get("step", 0) + 1
    wd = wd_of(group)
    p_norm, g_norm = float(np.linalg.norm(p)), float(np.linalg.norm(g))
    local = group["trust_coef"] * p_norm / (g_norm + wd * p_norm + group["eps"]) if p_norm > 0 and g_norm > 0 else 1
    u = local * (g + wd * p)
    if group["momentum"]:
        u = state["momentum_buffer"] = group["momentum"] * state.get("momentum_buffer", 0 * p) + u
    return p - lr_of(group) * u


def newton_schulz(x, a, b, c, steps, eps):
    """torch.optim.Muon's orthogonalization, in float64 (torch runs it in bfloat16)."""
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(float(np.linalg.norm(x)), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon(p, g, state, group):
    """torch.optim.Muon's documented algorithm (its lerp momentum, decoupled decay, adjusted lr)."""
    state["step"] = state.get("step", 0) + 1
    mu = group["momentum"]
    b = state["momentum_buffer"] = state.get("momentum_buffer", 0 * p) * mu + (1 - mu) * g
    u = (1 - mu) * g + mu * b if group["nesterov"] else b
    o = newton_schulz(u, *group["ns_coefficients"], group["ns_steps"], group["eps"])
    rows, cols = p.shape
    ratio = 0.2 * math.sqrt(max(rows, cols)) if group["adjust_lr_fn"] == "match_rms_adamw" else \
        math.sqrt(max(1, rows / cols))
    return p * (1 - lr_of(group) * wd_of(group)) - lr_of(group) * ratio * o


def sparse_adam(p, g, state, group):
    """torch.optim.SparseAdam's update at the non-zero entries of g (Adam with eps inside the correction)."""
    t = state["step"] = state.get("step", 0) + 1
    b1, b2 = group["betas"]
    here = g != 0
    m = state["exp_avg"] = np.where(here, b1 * state.get("exp_avg", 0 * p) + (1 - b1) * g, state.get("exp_avg", 0 * p))
    v = state["exp_avg_sq"] = np.where(here, b2 * state.get("exp_avg_sq", 0 * p) + (1 - b2) * g * g,
                                       state.get("exp_avg_sq", 0 * p))
    step = lr_of(group) * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return np.where(here, p - step * m / (np.sqrt(v) + group["eps"]), p)


REFERENCES = {"LAMB": lamb, "LARS": lars, "Muon": muon, "SparseAdam": sparse_adam}
PAPER_CASES = [
    ("LAMB", dict()),
    ("LAMB", dict(lr=0.01, weight_decay=0.1)),
    ("LAMB", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, clamp_value=1.5, weight_decay=0.05)),
    ("LAMB", dict(lr=0.01, maximize=True, scale=2.0, clip_norm=1.0)),
    ("LAMB", dict(lr=0.01, clip_value=0.5, clip_norm=0.7, clip_per_tensor=True)),
    ("LARS", dict(lr=0.1)),
    ("LARS", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("LARS", dict(lr=0.5, momentum=0.9, trust_coef=0.02, eps=1e-3, maximize=True)),
    ("LARS", dict(lr=0.1, momentum=0.5, scale=0.5, clip_norm=0.8, weight_decay=1e-3)),
    ("Muon", dict()),
    ("Muon", dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw", ns_steps=3, weight_decay=0.05)),
    ("Muon", dict(lr=0.02, momentum=0.9, ns_coefficients=(3.0, -3.2, 1.2), eps=1e-3, scale=3.0, clip_norm=2.0,
                  maximize=True, clip_value=1.5)),
    ("SparseAdam", dict()),
    ("SparseAdam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, maximize=True, scale=2.0)),
    ("SparseAdam", dict(lr=0.01, clip_norm=0.5, clip_per_tensor=True, clip_value=0.4)),
]
SHAPES = {"LAMB": [(3, 4), (5,), (), (4, 5)], "LARS": [(3, 4), (5,), (), (4, 5)],
          "Muon": [(5, 3), (3, 4), (1, 1), (4, 4)], "SparseAdam": [(6, 3), (5,), (), (4, 2, 3)]}


def _zero_rows(rng, grads):
    """Some rows of each gradient exactly zero (SparseAdam's absent rows); a 0-d gradient sometimes zero."""
    for g in grads:
        if g is not None:
            g[rng.random(g.shape[:1]) < 0.4] = 0
    return grads


def _settings(kind, config):
    probe = getattr(optim, kind)([graphopt.Parameter(np.zeros((1, 1)))], **config)
    return {k: v for k, v in probe.param_groups[0].items() if k != "params"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind, config", PAPER_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(PAPER_CASES)])
def test_matches_reference(kind, config, dtype):
    _run_against_reference(kind, config, dtype)


@pytest.mark.parametrize("kind, config", PAPER_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(PAPER_CASES)])
def test_masked_graph_matches_reference(kind, config):
    """Every step that skips a tensor through the group's masked graph (a ``has_grad`` input per tensor)."""
    _run_against_reference(kind, config, np.float64, masked=True)


def _run_against_reference(kind, config, dtype, masked=False):
    rng = np.random.default_rng(1)
    shapes = SHAPES[kind]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    init[2] = np.zeros(shapes[2], dtype)  # a zero-norm parameter: the trust ratio's guard
    ours = [graphopt.Parameter(a.copy()) for a in init]
    extra = dict(lr_mult=2.0, decay_mult=0.5)
    opt = getattr(optim, kind)([{"params": ours[:2]}, {"params": ours[2:], **extra}], **config)
    if masked:
        opt._executor.patterns = 0  # noqa: SLF001 - every per-tensor step runs the masked graph
    settings = _settings(kind, config)
    groups = [dict(settings, params=[a.astype(np.float64) for a in init[:2]]),
              dict(settings, **extra, params=[a.astype(np.float64) for a in init[2:]])]
    states = [[{}, {}], [{}, {}]]
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 2e-5)
    for step in range(STEPS):
        grads = _grads(rng, shapes, dtype, step)
        if step == 0:
            grads[3] = np.zeros(shapes[3], dtype)  # a zero gradient: LARS's guard, SparseAdam's all-absent tensor
        if kind == "SparseAdam":
            grads = _zero_rows(rng, grads)
        if step == LR_STEP:
            for group in (*opt.param_groups, *groups):
                group["lr"] *= 0.3
        for p, g in zip(ours, grads):
            p.grad = g
        opt.step()
        for group, group_states, offset in zip(groups, states, (0, 2)):
            active = [i for i in range(2) if grads[offset + i] is not None]
            processed = preprocess([grads[offset + i].astype(np.float64) for i in active], group)
            for i, g in zip(active, processed):
                group["params"][i] = REFERENCES[kind](group["params"][i], g, group_states[i], group)
        expected = groups[0]["params"] + groups[1]["params"]
        expected_states = states[0] + states[1]
        for k, (p, want, state) in enumerate(zip(ours, expected, expected_states)):
            np.testing.assert_allclose(p.data, want, rtol=rtol, atol=atol, err_msg=f"params[{k}] at step {step}")
            for slot, value in state.items():
                got = opt.state[p][slot]
                if slot == "step":
                    assert got == value, f"params[{k}] step count at step {step}"
                else:
                    np.testing.assert_allclose(got, value, rtol=rtol, atol=atol, err_msg=f"{slot} at step {step}")
    if masked:
        assert any(graphs.masked is not None for structures in opt._executor._groups.values()  # noqa: SLF001
                   for graphs in structures.values())


# -- against torch.optim, over torch's own configuration sets -------------------------------------


TENSOR_LR = "tensor lr"  # torch's "Tensor lr": torch.tensor(0.001) (float32) for torch, its value for graphopt
TORCH_CONFIGS = {  # optim_inputs_func_<name>("cpu") of torch 2.13's common_optimizers.py, in torch's order
    "muon": [dict(), dict(lr=0.01), dict(lr=TENSOR_LR), dict(weight_decay=0.2), dict(momentum=0.8),
             dict(ns_steps=6), dict(ns_coefficients=(3.4, -4.7, 2.0))],
    "sparseadam": [dict(), dict(lr=0.01), dict(lr=TENSOR_LR), dict(maximize=True)],
}


def _tolerances(dtype, torch_config):
    """(rtol, atol) for a torch comparison: torch keeps a tensor ``lr`` as a float32 tensor, so its scalar
    arithmetic with it (``1 - lr * weight_decay``, ``lr * ratio``, ``lr * sqrt(c2) / c1``) is rounded to
    float32 (relative 6e-8 each) even for float64 parameters: up to 6e-8 of ``|p|`` (< 3 here) per step."""
    rtol, atol = TOLERANCES[dtype]
    tensor_lr = not isinstance(torch_config.get("lr", 0.0), float)
    return (max(rtol, 3e-7), max(atol, STEPS * 6e-8 * 3)) if tensor_lr else (rtol, atol)


def _ids(name):
    return ["-".join(f"{k}={v}" for k, v in c.items()) or "default" for c in TORCH_CONFIGS[name]]


def _configs(torch, name, index):
    """Configuration ``index`` of torch's set, as graphopt takes it and as torch does."""
    config = TORCH_CONFIGS[name][index]
    theirs = {k: torch.tensor(0.001) if v == TENSOR_LR else v for k, v in config.items()}
    return {k: float(v) if k == "lr" else v for k, v in theirs.items()}, theirs  # torch's float32 0.001


def _assert_state(opt, ref, ours, theirs, slots, rtol, atol, step):
    for k, (p, q) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"params[{k}] at step {step}")
        if q in ref.state:
            if "step" in ref.state[q]:  # torch's Muon keeps no step count
                assert opt.state[p]["step"] == int(ref.state[q]["step"]), f"params[{k}] step count at step {step}"
            for slot in slots:
                np.testing.assert_allclose(opt.state[p][slot], ref.state[q][slot].numpy(), rtol=rtol, atol=atol,
                                           err_msg=f"params[{k}] {slot} at step {step}")
        else:
            assert p not in opt.state


MUON_SHAPES = [(5, 3), (3, 4), (4, 4), (2, 7)]  # tall, wide, square


def _torch_newton_schulz_in(dtype_of_input):
    """torch's ``_zeropower_via_newtonschulz`` with its bfloat16 cast removed: the same iterations in
    the gradient's own dtype."""
    torch = pytest.importorskip("torch")

    def zeropower(grad, ns_coefficients, ns_steps, eps):
        a, b, c = ns_coefficients
        x = grad.clone()
        if grad.size(0) > grad.size(1):
            x = x.T
        x = x / x.norm().clamp(min=eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if grad.size(0) > grad.size(1) else x
    return zeropower


def _run_muon_against_torch(configs, dtype, monkeypatch, exact_ns):
    """20+ steps of graphopt's Muon and torch's; returns (ours, theirs, opt, ref) after asserting each step.

    ``exact_ns``: torch's Newton-Schulz runs in the parameters' dtype (patched), so everything is compared
    tightly. Otherwise torch runs it in bfloat16 (unit roundoff 2**-8), and graphopt does not: the
    momentum buffers still match tightly (no bfloat16 there, and the test's gradients do not depend on
    the parameters, so the difference never feeds back), while each step's parameter update
    ``lr * ratio * NS(u)`` may differ by ``lr * ratio * DELTA`` per element. NS(u) has singular values
    in about [0.7, 1.2], so its elements are below ~1.2; DELTA = 0.15 bounds torch's bfloat16 error on
    them: 2**-8 per rounding of some fifteen roundings, amplified by up to the polynomial's slope
    ``a = 3.4445`` per iteration along small singular values (measured at most 0.066 on Gaussian
    matrices of these shapes). The parameters' tolerance is the sum of those bounds over the steps taken.
    """
    torch = pytest.importorskip("torch")
    if exact_ns:
        monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", _torch_newton_schulz_in(dtype))
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(dtype) for s in MUON_SHAPES]
    ours = [graphopt.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = optim.Muon(ours, **configs[0])
    ref = torch.optim.Muon(theirs, **configs[1])
    rtol, atol = _tolerances(dtype, configs[1]) if dtype == np.float64 else (1e-4, 1e-5)  # NS amplifies rounding
    drift = np.zeros(len(ours))  # per tensor: the bfloat16 bound accumulated so far
    group = ref.param_groups[0]
    for step in range(STEPS):
        grads = _grads(rng, MUON_SHAPES, dtype, step)
        if step == LR_STEP:
            for g in (*opt.param_groups, *ref.param_groups):
                g["lr"] *= 0.5
        for k, (p, q, g) in enumerate(zip(ours, theirs, grads)):
            p.grad = g
            q.grad = None if g is None else torch.from_numpy(g.copy())
            if g is not None and not exact_ns:
                rows, cols = q.shape
                drift[k] += float(group["lr"]) * math.sqrt(max(1, rows / cols)) * 0.15
        opt.step()
        ref.step()
        if exact_ns:
            _assert_state(opt, ref, ours, theirs, ("momentum_buffer",), rtol, atol, step)
        else:
            for k, (p, q) in enumerate(zip(ours, theirs)):
                np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=0, atol=drift[k],
                                           err_msg=f"params[{k}] at step {step}")
                np.testing.assert_allclose(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"].numpy(),
                                           rtol=rtol, atol=atol, err_msg=f"momentum_buffer at step {step}")
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", range(len(TORCH_CONFIGS["muon"])), ids=_ids("muon"))
def test_muon_matches_torch_with_its_newton_schulz_in_our_dtype(index, dtype, monkeypatch):
    torch = pytest.importorskip("torch")
    _run_muon_against_torch(_configs(torch, "muon", index), dtype, monkeypatch, exact_ns=True)


@pytest.mark.parametrize("index", range(len(TORCH_CONFIGS["muon"])), ids=_ids("muon"))
def test_muon_matches_torch_within_bfloat16(index, monkeypatch):
    torch = pytest.importorskip("torch")
    ours, theirs = _run_muon_against_torch(_configs(torch, "muon", index), np.float32, monkeypatch, exact_ns=False)
    moved = [np.abs(p.data - q.detach().numpy()).max() for p, q in zip(ours, theirs)]
    assert max(moved) > 0  # torch really ran in bfloat16 (else the tight test above covers it)


def test_muon_adjusted_lr_matches_torch(monkeypatch):
    for config in (dict(lr=0.02, adjust_lr_fn="original"), dict(lr=0.02, adjust_lr_fn="match_rms_adamw"),
                   dict(lr=0.02, nesterov=False)):
        _run_muon_against_torch((config, config), np.float64, monkeypatch, exact_ns=True)


SPARSE_SHAPES = [(6, 3), (5,), (4, 2, 3)]


def _sparse(torch, g, layout):
    """``g`` as torch's sparse gradient: its non-zero rows (a hybrid COO tensor, nn.Embedding's layout)
    or its non-zero elements."""
    dense = torch.from_numpy(g.copy())
    if layout == "elements":
        return dense.to_sparse()
    rows = np.flatnonzero(np.any(g.reshape(g.shape[0], -1) != 0, axis=1))
    index = torch.from_numpy(rows[None, :].astype(np.int64))
    return torch.sparse_coo_tensor(index, dense[torch.from_numpy(rows)], size=g.shape, check_invariants=True).coalesce()


@pytest.mark.parametrize("layout", ["rows", "elements"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", range(len(TORCH_CONFIGS["sparseadam"])), ids=_ids("sparseadam"))
def test_sparse_adam_matches_torch(index, dtype, layout):
    torch = pytest.importorskip("torch")
    config, torch_config = _configs(torch, "sparseadam", index)
    rng = np.random.default_rng(4)
    init = [rng.standard_normal(s).astype(dtype) for s in SPARSE_SHAPES]
    ours = [graphopt.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = optim.SparseAdam(ours, **config)
    ref = torch.optim.SparseAdam(theirs, **torch_config)
    rtol, atol = _tolerances(dtype, torch_config)
    for step in range(STEPS):
        grads = _grads(rng, SPARSE_SHAPES, dtype, step)
        if layout == "rows":
            grads = _zero_rows(rng, grads)
        else:  # scattered zeros: in a row layout torch would move them, in an element layout it does not
            grads = [None if g is None else np.where(rng.random(g.shape) < 0.4, 0, g).astype(dtype) for g in grads]
        if step == 2:
            grads[0][...] = 0  # a gradient with no entries: the step counts, nothing moves
        if step == LR_STEP:
            for g in (*opt.param_groups, *ref.param_groups):
                g["lr"] *= 0.5
        for p, q, g in zip(ours, theirs, grads):
            p.grad = g
            q.grad = None if g is None else _sparse(torch, g, layout)
        opt.step()
        ref.step()
        _assert_state(opt, ref, ours, theirs, ("exp_avg", "exp_avg_sq"), rtol, atol, step)


# -- state dicts and settings -------------------------------------------------------------------------

ROUND_TRIPS = [("Muon", dict(lr=0.02, weight_decay=0.05)), ("LAMB", dict(lr=0.01, weight_decay=0.1)),
               ("LARS", dict(lr=0.1, momentum=0.9)), ("SparseAdam", dict(lr=0.01))]


@pytest.mark.parametrize("kind, config", ROUND_TRIPS, ids=[k for k, _ in ROUND_TRIPS])
def test_state_dict_round_trip_mid_run_equals_uninterrupted(kind, config):
    rng = np.random.default_rng(5)
    shapes = SHAPES[kind]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [_zero_rows(rng, _grads(rng, shapes, np.float64, step)) for step in range(STEPS)]
    whole = [graphopt.Parameter(a.copy()) for a in init]
    opt = getattr(optim, kind)(whole, **config)
    first = [graphopt.Parameter(a.copy()) for a in init]
    before = getattr(optim, kind)(first, **config)
    for step, step_grads in enumerate(grads):
        for p, g in zip(whole, step_grads):
            p.grad = g
        opt.step()
        if step < STEPS // 2:
            for p, g in zip(first, step_grads):
                p.grad = g
            before.step()
    saved = before.state_dict()
    resumed = [graphopt.Parameter(p.data.copy()) for p in first]
    after = getattr(optim, kind)(resumed, **config)
    after.load_state_dict(saved)
    for step_grads in grads[STEPS // 2:]:
        for p, g in zip(resumed, step_grads):
            p.grad = g
        after.step()
    for k, (p, q) in enumerate(zip(whole, resumed)):
        np.testing.assert_array_equal(q.data, p.data, err_msg=f"params[{k}]")
        assert set(after.state[q]) == set(opt.state[p])
        for slot, value in opt.state[p].items():
            np.testing.assert_array_equal(after.state[q][slot], value, err_msg=f"params[{k}] {slot}")


BAD_SETTINGS = [
    ("Muon", dict(lr=-1.0), ValueError, "'lr'"),
    ("Muon", dict(momentum=-0.1), ValueError, "'momentum'"),
    ("Muon", dict(weight_decay=-0.1), ValueError, "'weight_decay'"),
    ("Muon", dict(ns_steps=100), ValueError, "'ns_steps'"),
    ("Muon", dict(ns_steps=2.5), ValueError, "'ns_steps'"),
    ("Muon", dict(ns_coefficients=(1.0, 2.0)), ValueError, "'ns_coefficients'"),
    ("Muon", dict(adjust_lr_fn="arbitrary"), ValueError, "'adjust_lr_fn'"),
    ("Muon", dict(nesterov=1), TypeError, "'nesterov'"),
    ("LAMB", dict(betas=(1.0, 0.9)), ValueError, r"'betas\[0\]'"),
    ("LAMB", dict(eps=-1e-8), ValueError, "'eps'"),
    ("LAMB", dict(clamp_value=-1.0), ValueError, "'clamp_value'"),
    ("LAMB", dict(clip_norm=-1.0), ValueError, "'clip_norm'"),
    ("LARS", dict(lr=0.1, trust_coef=-0.001), ValueError, "'trust_coef'"),
    ("LARS", dict(lr=0.1, momentum=-0.9), ValueError, "'momentum'"),
    ("LARS", dict(lr=0.1, eps=float("nan")), ValueError, "'eps'"),
    ("LARS", dict(), ValueError, "'lr' is required"),
    ("SparseAdam", dict(lr=0.0), ValueError, "'lr'"),
    ("SparseAdam", dict(eps=0.0), ValueError, "'eps'"),
    ("SparseAdam", dict(betas=(0.9, 1.0)), ValueError, r"'betas\[1\]'"),
]


@pytest.mark.parametrize("kind, config, error, key", BAD_SETTINGS,
                         ids=[f"{k}-{'-'.join(c)}" for k, c, _, _ in BAD_SETTINGS])
def test_bad_settings_raise_naming_the_key(kind, config, error, key):
    with pytest.raises(error, match=key):
        getattr(optim, kind)([graphopt.Parameter(np.zeros((2, 2)))], **config)


def test_bad_setting_changed_later_raises_at_step_and_changes_nothing():
    p = graphopt.Parameter(np.ones((2, 3)))
    opt = optim.Muon([p], lr=0.1)
    p.grad = np.ones((2, 3))
    opt.param_groups[0]["ns_steps"] = -1
    with pytest.raises(ValueError, match="'ns_steps'"):
        opt.step()
    np.testing.assert_array_equal(p.data, np.ones((2, 3)))
    assert p not in opt.state


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_muon_refuses_parameters_that_are_not_matrices(shape):
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        optim.Muon([graphopt.Parameter(np.zeros(shape))])
    opt = optim.Muon([graphopt.Parameter(np.zeros((2, 2)))])
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        opt.add_param_group({"params": [graphopt.Parameter(np.zeros(shape))]})


def test_muon_update_is_matrix_products_in_a_per_tensor_graph():
    """The exported update has MatMul nodes (3 per Newton-Schulz iteration per tensor), no custom domain."""
    params = [graphopt.Parameter(np.zeros((3, 2)), name="w"), graphopt.Parameter(np.zeros((2, 5)), name="v")]
    model = optim.Muon(params, ns_steps=4).export()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 * 4 * 3
    assert {n.domain for n in model.graph.node} <= {""}


@pytest.mark.parametrize("kind, kwargs, trainable", [
    ("Muon", dict(lr=0.05), ["W1", "W2"]),  # Muon takes the matrices only
    ("LAMB", dict(lr=0.01, weight_decay=0.1), None),
    ("LARS", dict(lr=0.5, momentum=0.9, trust_coef=0.01), None),
    ("SparseAdam", dict(lr=0.01), None),
])
def test_trainer_step_equals_gradients_plus_optimizer_step(kind, kwargs, trainable):
    """The Trainer's one-call step (backward + these updates in one graph) against the facade fed the
    same gradients, computed by hand."""
    from onnx import numpy_helper

    from tests.test_trainer import numpy_gradients, regression_model

    model = regression_model()
    trainer = graphopt.Trainer(model, loss="loss", optimizer=getattr(optim, kind)(**kwargs), trainable=trainable)
    params = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    mirror = {n: graphopt.Parameter(v, name=n) for n, v in params.items()}
    trained = [mirror[n] for n in (trainable or mirror)]
    reference = getattr(optim, kind)(trained, **kwargs)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
        grads, expected_loss = numpy_gradients({n: p.data for n, p in mirror.items()}, x, t)
        assert trainer.step({"x": x, "t": t}) == pytest.approx(expected_loss, rel=1e-10)
        for p in trained:
            p.grad = grads[p.name]
        reference.step()
    assert set(trainer.parameters) == {p.name for p in trained}
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, mirror[name].data, rtol=1e-9, atol=1e-12)


# -- the symbolic matrix ops the Newton-Schulz iterations are built from -------------------------------


def test_matmul_and_transpose_compute_what_numpy_does():
    g = Graph()
    a, b = g.input("a", np.float64, (2, 3)), g.input("b", np.float64, (2, 4))
    g.output("product", matmul(transpose(a), b))
    g.output("gram", matmul(a, transpose(a)))
    rng = np.random.default_rng(0)
    av, bv = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    session = ort.InferenceSession(g.to_model().SerializeToString(), providers=["CPUExecutionProvider"])
    product, gram = session.run(["product", "gram"], {"a": av, "b": bv})
    np.testing.assert_allclose(product, av.T @ bv, rtol=1e-14)
    np.testing.assert_allclose(gram, av @ av.T, rtol=1e-14)


@pytest.mark.parametrize("build, message", [
    (lambda x, y, v, h: matmul(x, x), r"MatMul: inner dimensions differ: \[2, 3\] @ \[2, 3\]"),
    (lambda x, y, v, h: matmul(x, v), r"MatMul: operands must be 2-D"),
    (lambda x, y, v, h: matmul(y, h), r"MatMul: operands have different dtypes"),
    (lambda x, y, v, h: transpose(v), r"Transpose: operand must be a 2-D matrix"),
], ids=["inner", "rank", "dtype", "transpose"])
def test_matmul_and_transpose_refuse_bad_operands_naming_the_node(build, message):
    g = Graph()
    x, y = g.input("x", np.float32, (2, 3)), g.input("y", np.float32, (3, 2))
    v, h = g.input("v", np.float32, (3,)), g.input("h", np.float64, (2, 2))
    with pytest.raises(GraphBuildError, match=message):
        build(x, y, v, h)
