"""NAdam, ASGD and Adafactor against torch.optim, parameter by parameter and state entry by state entry.

The configurations are those of torch's own optimizer tests (``optim_inputs_func_nadam``,
``_asgd`` and ``_adafactor`` in torch/testing/_internal/common_optimizers.py, torch 2.13, the CPU
ones; that module cannot be imported without torch's test dependencies, so they are copied here),
plus a few of ours that reach what those leave untouched (ASGD's averaging, which starts after
``t0`` steps; Adafactor's ``eps1``). Each runs 24 steps with a gradient missing in one step, a
parameter frozen for five steps and then trained again, and ``lr`` changed twice -- where
ASGD's ``eta`` (computed with one step's ``lr``, used at the next) and NAdam's ``mu_product``
are state rather than functions of the step count.

torch keeps the per-tensor scalars (``step``, ``mu_product``, ``eta``, ``mu``) as 0-d tensors of
its default dtype, so the float64 runs set torch's default dtype to float64; graphopt keeps them
as Python floats.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import checkpoint, optim
from graphopt.runtime import Runtime
from tests.plans import plans_taken

torch = pytest.importorskip("torch")

TORCH_CONFIGS = {
    "NAdam": [{}, {"lr": 1e-3}, {"momentum_decay": 6e-3}, {"weight_decay": 0.1},
              {"weight_decay": 0.1, "momentum_decay": 6e-3},
              {"weight_decay": 0.1, "momentum_decay": 6e-3, "decoupled_weight_decay": True},
              {"weight_decay": 0.1, "maximize": True}],
    "ASGD": [{}, {"lambd": 0.1}, {"lr": 0.02}, {"t0": 100}, {"maximize": True}, {"weight_decay": 0.1},
             {"weight_decay": 0.1, "maximize": True}],
    "Adafactor": [{}, {"weight_decay": 0.1, "lr": 0.01}, {"weight_decay": 0.1, "maximize": True},
                  {"beta2_decay": -1.0}, {"d": 1.5}],
}
OURS = {
    "NAdam": [{"betas": (0.0, 0.99)}],  # mu_product 0: NAdam without momentum
    "ASGD": [{"t0": 4, "lambd": 0.05, "alpha": 0.5}, {"t0": 0, "lr": 0.05, "weight_decay": 0.05}],
    "Adafactor": [{"eps": (1e-4, 1e-2), "lr": 0.05}, {"eps": (0.0, 0.0), "d": 1.0}],
}
CASES = [(kind, kwargs) for source in (TORCH_CONFIGS, OURS) for kind, configs in source.items() for kwargs in configs]
SHAPES = [(4, 3), (6,), (), (2, 3, 5), (1, 7)]
DTYPES = [(np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 2e-6)]


@pytest.fixture
def torch_dtype(request):
    """torch's default dtype, which its scalar state takes, set to the test's for its duration."""
    previous = torch.get_default_dtype()
    yield lambda dtype: torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    torch.set_default_dtype(previous)


def _pair(kind, kwargs, dtype, seed=0, shapes=SHAPES, **ours):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [graphopt.Parameter(a) for a in init]
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    return (params, getattr(optim, kind)(params, **kwargs, **ours),
            tensors, getattr(torch.optim, kind)(tensors, foreach=False, **kwargs))


def _schedule(step, count):
    """Which tensors get no gradient in ``step``: one in step 5, the fourth in steps 8-12."""
    return {1} if step == 5 else ({3} if 8 <= step <= 12 and count > 3 else set())


def _feed(params, tensors, grads, skip):
    for i, (p, q, g) in enumerate(zip(params, tensors, grads)):
        p.grad = None if i in skip else g
        q.grad = None if i in skip else torch.from_numpy(g.copy())


def _set_lr(step, *optimizers):
    factor = {10: 0.5, 16: 3.0}.get(step)
    if factor:
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] *= factor


def _assert_state_matches(opt, ref, params, tensors, rtol, atol, where):
    for p, q in zip(params, tensors):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"param at {where}")
        theirs = ref.state.get(q, {})
        ours = opt.state.get(p, {})
        assert set(ours) == set(theirs), f"state entries at {where}: {sorted(ours)} vs torch {sorted(theirs)}"
        for key, value in theirs.items():
            if key == "step":
                assert ours["step"] == int(value), where
                continue
            expected = value.numpy()
            assert np.shape(ours[key]) == expected.shape, f"{key} at {where}"
            np.testing.assert_allclose(ours[key], expected, rtol=rtol, atol=atol, err_msg=f"{key} at {where}")


@pytest.mark.parametrize("dtype, rtol, atol", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind, kwargs", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_matches_torch_optim(kind, kwargs, dtype, rtol, atol, torch_dtype):
    torch_dtype(dtype)
    params, opt, tensors, ref = _pair(kind, kwargs, dtype)
    rng = np.random.default_rng(1)
    for step in range(24):
        _set_lr(step, opt, ref)
        _feed(params, tensors, [rng.standard_normal(p.shape).astype(dtype) for p in params],
              _schedule(step, len(params)))
        opt.step()
        ref.step()
        _assert_state_matches(opt, ref, params, tensors, rtol, atol, f"step {step}")


@pytest.mark.parametrize("kind, kwargs", [("NAdam", {"weight_decay": 0.1}), ("ASGD", {"t0": 2, "lambd": 0.05}),
                                          ("Adafactor", {"weight_decay": 0.1})])
def test_masked_graph_matches_torch(kind, kwargs, torch_dtype):
    """Every pattern of gradients through the one masked per-tensor graph (no exact ones allowed)."""
    torch_dtype(np.float64)
    params, opt, tensors, ref = _pair(kind, kwargs, np.float64)
    opt._executor.patterns = 0
    rng = np.random.default_rng(2)
    for step in range(12):
        _set_lr(step + 6, opt, ref)
        skip = {i for i in range(len(params)) if rng.random() < 0.3}
        _feed(params, tensors, [rng.standard_normal(p.shape) for p in params], skip)
        opt.step()
        ref.step()
        _assert_state_matches(opt, ref, params, tensors, 1e-10, 1e-12, f"step {step}")



@pytest.mark.parametrize("dtype, rtol, atol", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind, kwargs", [("NAdam", {"weight_decay": 0.1, "momentum_decay": 6e-3}),
                                          ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
                                          ("ASGD", {"t0": 3, "lambd": 0.05, "weight_decay": 0.1})])
def test_chunked_path_matches_torch(kind, kwargs, dtype, rtol, atol, torch_dtype, monkeypatch):
    """With every tensor stepped alike, NAdam and ASGD run chunked (rows of 16 split between two
    threads), their scalar state group-wide, and still match torch through lr changes."""
    torch_dtype(dtype)
    params, opt, tensors, ref = _pair(kind, kwargs, dtype, runtime=Runtime(chunk_size=16, threads=2))
    taken = plans_taken(monkeypatch)
    rng = np.random.default_rng(3)
    for step in range(14):
        _set_lr(step + 6, opt, ref)
        _feed(params, tensors, [rng.standard_normal(p.shape).astype(dtype) for p in params], set())
        opt.step()
        ref.step()
        _assert_state_matches(opt, ref, params, tensors, rtol, atol, f"step {step}")
    assert taken == ["_ChunkedPlan"] * 14


def test_unequal_scalar_state_runs_per_tensor_and_matches_torch(torch_dtype, monkeypatch):
    """A group whose tensors hold different mu_products (equal steps) must not share one value."""
    torch_dtype(np.float64)
    params, opt, tensors, ref = _pair("NAdam", {}, np.float64)
    rng = np.random.default_rng(4)
    _feed(params, tensors, [rng.standard_normal(p.shape) for p in params], set())
    opt.step()
    ref.step()
    saved, theirs = opt.state_dict(), ref.state_dict()
    saved["state"][2]["mu_product"] = 0.25
    theirs["state"][2]["mu_product"] = torch.tensor(0.25)
    opt.load_state_dict(saved)
    ref.load_state_dict(theirs)
    taken = plans_taken(monkeypatch)
    for step in range(3):
        _feed(params, tensors, [rng.standard_normal(p.shape) for p in params], set())
        opt.step()
        ref.step()
        _assert_state_matches(opt, ref, params, tensors, 1e-10, 1e-12, f"step {step}")
    assert taken == ["_TensorPlan"] * 3


@pytest.mark.parametrize("kind, kwargs", [("NAdam", {"weight_decay": 0.1}), ("ASGD", {"t0": 2, "lambd": 0.05}),
                                          ("Adafactor", {"weight_decay": 0.1, "eps": (1e-4, 1e-3)})])
def test_exported_update_model_matches_torch(kind, kwargs, torch_dtype):
    """`export()`'s model, run by plain onnxruntime with its outputs fed back, steps like torch; the
    scalar slots start at their initial values (mu_product, mu: 1)."""
    ort = pytest.importorskip("onnxruntime")
    torch_dtype(np.float32)
    params, opt, tensors, ref = _pair(kind, kwargs, np.float32)
    session = ort.InferenceSession(opt.export().SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    values = {name: opt._hyperparameters(opt.param_groups[0])[name.split(".", 1)[1]]
              for name in inputs if name.startswith("group0.")}
    values = {k: np.array(v, np.float64) for k, v in values.items()}
    names = [opt._names[p] for p in params]
    initial = {"mu_product": 1.0, "mu": 1.0, "eta": 0.0}
    for name, p in zip(names, params):
        values[name] = p.data.copy()
        for input_name, spec in inputs.items():
            slot = input_name[len(name) + 1:] if input_name.startswith(name + ".") else None
            if slot == "step" or slot in initial:
                values[input_name] = np.array(0.0 if slot == "step" else initial[slot], np.float64)
            elif slot is not None and slot != "grad":
                values[input_name] = np.zeros([d for d in spec.shape], np.float32)
    rng = np.random.default_rng(5)
    for step in range(4):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        for name, g in zip(names, grads):
            values[f"{name}.grad"] = g
        for q, g in zip(tensors, grads):
            q.grad = torch.from_numpy(g.copy())
        ref.step()
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, values)))
        for name in inputs:
            if name + ".new" in outputs:
                values[name] = outputs[name + ".new"]
        for name, q in zip(names, tensors):
            np.testing.assert_allclose(values[name], q.detach().numpy(), rtol=2e-5, atol=2e-6)
            for key, value in ref.state[q].items():
                np.testing.assert_allclose(values[f"{name}.{key}"], value.numpy(), rtol=2e-5, atol=2e-6,
                                           err_msg=f"{key} at step {step}")


@pytest.mark.parametrize("through_file", [False, True], ids=["state_dict", "checkpoint"])
@pytest.mark.parametrize("kind, kwargs", [("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
                                          ("ASGD", {"t0": 3, "lambd": 0.05}),
                                          ("Adafactor", {"weight_decay": 0.1})])
def test_resuming_mid_run_continues_bit_for_bit(kind, kwargs, through_file, tmp_path):
    """A run saved after 9 steps (one tensor frozen for some, so its scalar state differs) and resumed
    in a new optimizer ends exactly where the uninterrupted run does, lr changes after the save included."""
    rng = np.random.default_rng(6)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(16)]

    def run(params, opt, steps):
        for step in steps:
            _set_lr(step, opt)
            for i, (p, g) in enumerate(zip(params, grads[step])):
                p.grad = None if i in _schedule(step, len(params)) else g
            opt.step()

    whole = [graphopt.Parameter(a.copy()) for a in init]
    whole_opt = getattr(optim, kind)(whole, **kwargs)
    run(whole, whole_opt, range(16))

    first = [graphopt.Parameter(a.copy()) for a in init]
    first_opt = getattr(optim, kind)(first, **kwargs)
    run(first, first_opt, range(9))
    saved = first_opt.state_dict()
    if through_file:
        checkpoint.save_state_dict(saved, tmp_path / "state.npz")
        saved = checkpoint.load_state_dict(tmp_path / "state.npz")
    resumed = [graphopt.Parameter(p.data.copy()) for p in first]
    resumed_opt = getattr(optim, kind)(resumed, **kwargs)
    resumed_opt.load_state_dict(saved)
    run(resumed, resumed_opt, range(9, 16))

    for p, q in zip(whole, resumed):
        np.testing.assert_array_equal(p.data, q.data)
        ours, theirs = whole_opt.state[p], resumed_opt.state[q]
        assert set(ours) == set(theirs)
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
