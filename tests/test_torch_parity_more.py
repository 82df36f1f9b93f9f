"""Adagrad, Adadelta, Adamax, RAdam and Rprop against torch.optim, parameter by parameter and
slot by slot (skipped without torch).

The configurations are those of torch's own tests, ``optim_inputs_func_<name>("cpu")`` in
torch/testing/_internal/common_optimizers.py (torch 2.13), run with ``foreach=False``; the
ones torch adds only on CUDA (``capturable``) are left out, as torch leaves them out on CPU.
Each run has a step in which one parameter has no gradient, a parameter frozen for several
steps then unfrozen (the group then runs per tensor, its step counts differing), and a change
of ``lr`` half way. graphopt's own options (``lr_mult``, ``decay_mult``, ``scale``, clipping)
are checked against torch fed the equivalent settings and preprocessed gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphopt
from graphopt import optim

torch = pytest.importorskip("torch")

STEPS = 24
SHAPES = [(4, 3), (6,), (), (5,)]
DTYPES = [(np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 2e-6)]


class TensorLr(float):
    """torch's "Tensor lr" configuration: a 0-d tensor for torch, a 0-d array for graphopt."""


CONFIGS = {  # optim_inputs_func_<name>("cpu"), in torch's order
    "Adagrad": [
        dict(),
        dict(weight_decay=0.1),
        dict(weight_decay=0.1, maximize=True),
        dict(lr=0.1),
        dict(initial_accumulator_value=0.1, weight_decay=0.1),
        dict(lr=0.1, lr_decay=0.5, weight_decay=0.1),
        dict(lr=TensorLr(0.001)),
    ],
    "Adadelta": [
        dict(),
        dict(lr=0.01),
        dict(weight_decay=0.1),
        dict(maximize=True),
        dict(weight_decay=0.1, maximize=True),
        dict(rho=0.95, weight_decay=0.9),
    ],
    "Adamax": [
        dict(),
        dict(lr=0.1),
        dict(weight_decay=0.1),
        dict(maximize=True),
        dict(weight_decay=0.1, maximize=True),
    ],
    "RAdam": [
        dict(),
        dict(lr=2e-3),
        dict(eps=1e-6),
        dict(weight_decay=0.1),
        dict(weight_decay=0.1, decoupled_weight_decay=True),
        dict(weight_decay=0.1, maximize=True),
    ],
    "Rprop": [
        dict(),
        dict(lr=2e-4),
        dict(etas=(0.5, 1.5)),
        dict(step_sizes=(2e-6, 100)),
        dict(maximize=True),
    ],
}
SLOTS = {"Adagrad": ("sum",), "Adadelta": ("square_avg", "acc_delta"), "Adamax": ("exp_avg", "exp_inf"),
         "RAdam": ("exp_avg", "exp_avg_sq"), "Rprop": ("prev", "step_size")}
CASES = [(kind, config) for kind, configs in CONFIGS.items() for config in configs]


def _case_id(case):
    kind, config = case
    return kind + "-" + ("-".join(f"{k}={v}" for k, v in config.items()) or "defaults")


def _for_torch(config):
    return {k: torch.tensor(float(v), dtype=torch.float64) if isinstance(v, TensorLr) else v
            for k, v in config.items()}


def _for_graphopt(config):
    return {k: np.asarray(float(v)) if isinstance(v, TensorLr) else v for k, v in config.items()}


def _gradients(rng, dtype):
    """Per step, a gradient or None per parameter: params[1] has none at step 5, params[2] is
    frozen for steps 8-11 and then resumes, and from step 16 one parameter in turn has none
    (more patterns than get graphs of their own: the masked update graph runs those)."""
    steps = []
    for step in range(STEPS):
        missing = {1} if step == 5 else {2} if 8 <= step <= 11 else {step % 4} if step >= 16 else set()
        steps.append([None if i in missing else rng.standard_normal(s).astype(dtype) for i, s in enumerate(SHAPES)])
    return steps


def _compare(opt, ours, ref, theirs, kind, rtol, atol, what):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"{what}: params[{i}]")
        torch_state = ref.state[q]
        if not torch_state or int(torch_state["step"]) == 0:
            continue  # torch's Adagrad makes state at construction; graphopt at the first step
        state = opt.state[p]
        assert state["step"] == int(torch_state["step"]), f"{what}: step of params[{i}]"
        assert set(SLOTS[kind]) <= set(torch_state)
        for slot in SLOTS[kind]:
            np.testing.assert_allclose(state[slot], torch_state[slot].numpy(), rtol=rtol, atol=atol,
                                       err_msg=f"{what}: {slot} of params[{i}]")


@pytest.mark.parametrize("dtype, rtol, atol", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch_optim(case, dtype, rtol, atol):
    kind, config = case
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [graphopt.Parameter(a) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    # two groups; the second takes every setting from the defaults
    opt = getattr(optim, kind)([{"params": ours[:3]}, {"params": ours[3:]}], **_for_graphopt(config))
    ref = getattr(torch.optim, kind)([{"params": theirs[:3]}, {"params": theirs[3:]}], foreach=False,
                                     **_for_torch(config))
    for step, grads in enumerate(_gradients(rng, dtype)):
        if step == 12:
            for group in (*opt.param_groups, *ref.param_groups):
                group["lr"] = group["lr"] * 0.5
        for p, q, g in zip(ours, theirs, grads):
            p.grad = g
            q.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step()
        ref.step()
        _compare(opt, ours, ref, theirs, kind, rtol, atol, f"step {step}")
    assert opt.state[ours[2]]["step"] == STEPS - 6
    graphs = [g for structures in opt._executor._groups.values() for g in structures.values()]  # noqa: SLF001
    assert any(g.masked is not None for g in graphs)  # the masked update graph ran


OPTIONS = [
    dict(lr_mult=0.5, decay_mult=2.0, scale=2.0, clip_norm=1.5),
    dict(lr_mult=2.0, decay_mult=0.5, clip_value=0.4, maximize=True),
    dict(lr_mult=0.5, decay_mult=3.0, clip_norm=0.8, clip_per_tensor=True),
]
OPTION_CASES = [(kind, options) for kind in CONFIGS for options in OPTIONS]


def _torch_gradients(grads, options):
    """What graphopt's ``scale``, ``clip_value`` and ``clip_norm`` make of a group's gradients
    (float64 numpy, every tensor with a gradient)."""
    grads = [g.astype(np.float64) * options.get("scale", 1.0) for g in grads]
    if options.get("clip_value"):
        grads = [np.clip(g, -options["clip_value"], options["clip_value"]) for g in grads]
    if options.get("clip_norm"):
        limit = options["clip_norm"]
        norms = [math.sqrt(float(np.sum(g * g))) for g in grads]
        if not options.get("clip_per_tensor"):
            norms = [math.sqrt(sum(n * n for n in norms))] * len(grads)
        grads = [g * (limit / max(n, limit)) for g, n in zip(grads, norms)]
    return grads


@pytest.mark.parametrize("case", OPTION_CASES, ids=[_case_id(c) for c in OPTION_CASES])
def test_graphopt_options_match_torch_with_equivalent_settings(case):
    """``lr_mult`` and ``decay_mult`` multiply ``lr`` and ``weight_decay`` (Rprop: the initial
    step size); ``scale`` and the clipping options act on the gradients before anything else."""
    kind, options = case
    base = dict(lr=0.01, weight_decay=0.1) if kind != "Rprop" else dict(lr=0.01)
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in SHAPES]
    ours = [graphopt.Parameter(a) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    multipliers = {k: options[k] for k in ("lr_mult", "decay_mult")}
    settings = {k: v for k, v in options.items() if k not in multipliers}
    opt = getattr(optim, kind)([{"params": ours, **multipliers}], **base, **settings)
    equivalent = dict(base, lr=base["lr"] * options["lr_mult"], maximize=options.get("maximize", False))
    if "weight_decay" in base:
        equivalent["weight_decay"] = base["weight_decay"] * options["decay_mult"]
    ref = getattr(torch.optim, kind)(theirs, foreach=False, **equivalent)
    for step in range(STEPS):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for p, q, g in zip(ours, theirs, grads):
            p.grad = g
        for q, g in zip(theirs, _torch_gradients(grads, options)):
            q.grad = torch.from_numpy(np.array(g))
        opt.step()
        ref.step()
        _compare(opt, ours, ref, theirs, kind, 1e-10, 1e-12, f"step {step}")
