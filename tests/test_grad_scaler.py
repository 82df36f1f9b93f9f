"""A Trainer's non-finite guard and dynamic loss scale (issue 11, item 5), against torch.amp.GradScaler.

torch's three calls per step (``scaler.scale(loss).backward()``, ``scaler.step(opt)``,
``scaler.update()``) are the reference; graphopt does all of them inside one training-step graph.
Batches with an inf input make every gradient non-finite: both must skip those steps and back off.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import names, optim
from graphopt.checkpoint import load_state_dict, save_state_dict
from graphopt.runtime import Runtime
from graphopt.training import GradScaler, losses

torch = pytest.importorskip("torch")

SCALER = dict(init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.25, growth_interval=3)


def _module(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _batches(n=14, bad=(4, 5, 9)):
    rng = np.random.default_rng(1)
    batches = []
    for k in range(n):
        x, y = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((6, 2)).astype(np.float32)
        if k in bad:
            x[2, 1] = np.inf
        batches.append((x, y))
    return batches


def _trainer(module, fused=None, **kwargs):
    model = graphopt.from_torch(module, torch.zeros(6, 3), input_names=["x"], output_names=["y"])
    return graphopt.Trainer(model, losses.mse("y"), optim.Adam(lr=0.01, runtime=Runtime(fused=fused)), **kwargs)


def _torch_run(module, batches):
    opt = torch.optim.Adam(module.parameters(), lr=0.01, foreach=False)
    scaler = torch.amp.GradScaler("cpu", **SCALER)
    scales, losses_ = [], []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(torch.from_numpy(x)), torch.from_numpy(y))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        losses_.append(float(loss.detach()))
    return opt, scaler, scales, losses_


@pytest.mark.parametrize("fused", [None, False], ids=["fused-where-built", "in-the-step-graph"])
def test_trainer_with_a_grad_scaler_matches_torch_amp_grad_scaler(fused):
    module = _module()
    trainer = _trainer(module, fused, grad_scaler=GradScaler(**SCALER))
    batches = _batches()
    opt, scaler, scales, torch_losses = _torch_run(module, batches)
    ours = []
    for x, y in batches:
        loss = trainer.step({"x": x}, labels=y)
        ours.append(trainer.grad_scaler.get_scale())
        assert np.isfinite(loss) == np.isfinite(torch_losses[len(ours) - 1])
    assert ours == scales  # backed off at 4, 5, 9; grown after every 3 finite steps in a row
    assert trainer.skipped_steps == 3
    for name, p in module.named_parameters():
        np.testing.assert_allclose(trainer.parameters[name].data, p.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        state = trainer.optimizer.state[trainer.parameters[name]]
        assert state["step"] == opt.state[p]["step"] == 11
        np.testing.assert_allclose(state["exp_avg_sq"], opt.state[p]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)
    expected = scaler.state_dict()
    assert trainer.state_dict()["grad_scaler"] == {**expected, "scale": float(expected["scale"])}


@pytest.mark.parametrize("fused", [None, False], ids=["fused-where-built", "in-the-step-graph"])
def test_a_skipped_step_changes_no_parameter_state_or_step_count(fused):
    module = _module()
    model = graphopt.from_torch(module, torch.zeros(6, 3), input_names=["x"], output_names=["y"])
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.1, momentum=0.9, runtime=Runtime(fused=fused)),
                               skip_nonfinite=True)
    (x, y), (bad, _) = _batches(2, bad=(1,))
    trainer.step({"x": x}, labels=y)
    before = trainer.state_dict()
    trainer.step({"x": bad}, labels=y)
    assert trainer.found_inf and trainer.skipped_steps == 1
    after = trainer.state_dict()
    for name, value in before["parameters"].items():
        np.testing.assert_array_equal(after["parameters"][name], value)
    for index, entry in before["optimizer"]["state"].items():
        assert after["optimizer"]["state"][index]["step"] == entry["step"] == 1
        np.testing.assert_array_equal(after["optimizer"]["state"][index]["momentum_buffer"], entry["momentum_buffer"])
    trainer.step({"x": x}, labels=y)
    assert not trainer.found_inf


def test_grad_scaler_state_is_checkpointed_and_resumes_bit_for_bit(tmp_path):
    batches = _batches()
    straight = _trainer(_module(), grad_scaler=GradScaler(**SCALER))
    resumed = _trainer(_module(), grad_scaler=GradScaler(**SCALER))
    for x, y in batches[:7]:
        straight.step({"x": x}, labels=y)
        resumed.step({"x": x}, labels=y)
    save_state_dict(resumed.state_dict(), tmp_path / "ckpt.npz")
    fresh = _trainer(_module(seed=5), grad_scaler=GradScaler())
    fresh.load_state_dict(load_state_dict(tmp_path / "ckpt.npz"))
    assert fresh.grad_scaler.state_dict() == straight.grad_scaler.state_dict()
    for x, y in batches[7:]:
        straight.step({"x": x}, labels=y)
        fresh.step({"x": x}, labels=y)
    for name, p in straight.parameters.items():
        np.testing.assert_array_equal(fresh.parameters[name].data, p.data)
    assert fresh.grad_scaler.state_dict() == straight.grad_scaler.state_dict()


def test_exported_step_model_carries_the_scale_and_the_decision():
    trainer = _trainer(_module(), grad_scaler=GradScaler(**SCALER))
    model = trainer.export(kind="step")
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    assert {"grad_scaler.scale", "grad_scaler.growth_tracker", "grad_scaler.growth_interval"} <= inputs
    assert {names.FOUND_INF, "grad_scaler.scale.new", "grad_scaler.growth_tracker.new"} <= outputs
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session = graphopt.TrainingSession(trainer.export(kind="training_info"))
    x, y = _batches(1)[0]
    session.step({"x": x, "labels": y})
    assert float(session.state["grad_scaler.scale"]) == SCALER["init_scale"]
    assert int(session.state["grad_scaler.growth_tracker"]) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(init_scale=0.0), "the scale must be > 0"), (dict(init_scale=1e39), "finite in float32"),
    (dict(growth_factor=1.0), "'growth_factor' must be > 1"), (dict(backoff_factor=1.0), "'backoff_factor'"),
    (dict(growth_interval=0), "'growth_interval' must be an int >= 1"), (dict(growth_interval=2.5), "an int"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradScaler(**kwargs)


def test_a_bad_loaded_scaler_state_changes_nothing():
    trainer = _trainer(_module(), grad_scaler=GradScaler(**SCALER))
    state = trainer.state_dict()
    before = {k: v.copy() for k, v in state["parameters"].items()}
    trainer.parameters[next(iter(before))].data[...] += 1  # so a wrongly applied load would show
    changed = {k: p.data.copy() for k, p in trainer.parameters.items()}
    with pytest.raises(ValueError, match="'_growth_tracker' must be an int in"):
        trainer.load_state_dict({**state, "grad_scaler": {**state["grad_scaler"], "_growth_tracker": 7}})
    for name, p in trainer.parameters.items():
        np.testing.assert_array_equal(p.data, changed[name])
    assert trainer.grad_scaler.get_scale() == SCALER["init_scale"]


def test_accumulated_steps_with_a_grad_scaler_match_torch():
    """Two micro-batches per step: torch sums both scaled backward passes, then unscales once."""
    module = _module(2)
    trainer = _trainer(module, grad_scaler=GradScaler(**SCALER))
    batches = _batches(16, bad=(5, 12))
    opt = torch.optim.Adam(module.parameters(), lr=0.01, foreach=False)
    scaler = torch.amp.GradScaler("cpu", **SCALER)
    for first, second in zip(batches[::2], batches[1::2]):
        opt.zero_grad()
        for x, y in (first, second):
            loss = torch.nn.functional.mse_loss(module(torch.from_numpy(x)), torch.from_numpy(y))
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        trainer.accumulate({"x": first[0]}, labels=first[1])
        trainer.step({"x": second[0]}, labels=second[1])
        assert trainer.grad_scaler.get_scale() == scaler.get_scale()
    assert trainer.skipped_steps == 2
    for name, p in module.named_parameters():
        np.testing.assert_allclose(trainer.parameters[name].data, p.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_the_eager_api_matches_torch_with_an_optimizer_of_ours():
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (5,)]]
    ours = [graphopt.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt, ref = optim.SGD(ours, lr=0.1, momentum=0.9), torch.optim.SGD(theirs, lr=0.1, momentum=0.9)
    scaler, reference = GradScaler(**SCALER), torch.amp.GradScaler("cpu", **SCALER)
    reference.scale(torch.zeros(()))  # torch creates its scale lazily, in scale()
    for step in range(12):
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in init]
        if step in (3, 4, 8):
            grads[1][2] = np.nan
        for p, q, g in zip(ours, theirs, grads):
            p.grad = g * scaler.get_scale()
            q.grad = torch.from_numpy(g * reference.get_scale())
        ran = scaler.step(opt)
        reference.step(ref)
        scaler.update()
        reference.update()
        assert ran == (step not in (3, 4, 8)) and scaler.get_scale() == reference.get_scale()
    assert opt.skipped_steps == 3
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-6, atol=1e-7)
