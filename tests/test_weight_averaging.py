"""Weight averaging (issue 11, item 4): EMA and SWA kept in the optimizer's state and updated in the
same graph call, against torch.optim.swa_utils.AveragedModel and a float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import optim
from graphopt.checkpoint import load_state_dict, save_state_dict
from graphopt.runtime import Runtime
from graphopt.training import losses
from tests.test_trainer_features import linear_model  # here, not in a test: its generator is reseeded per test

SHAPES = [(9, 7), (5,), (3, 2)]


def _run(averaging, kind="SGD", steps=12, missing=None, seed=0, **kwargs):
    """Our optimizer over ``steps`` steps; returns the params and the value of each parameter
    after each step (the numpy reference's input)."""
    rng = np.random.default_rng(seed)
    params = [graphopt.Parameter(rng.standard_normal(s), name=f"w{i}") for i, s in enumerate(SHAPES)]
    opt = getattr(optim, kind)(params, lr=0.1, averaging=averaging, runtime=Runtime(chunk_size=32, threads=2),
                               **kwargs)
    history = []
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if missing is not None and (step, i) in missing else rng.standard_normal(p.shape)
        opt.step()
        history.append([p.data.copy() for p in params])
    return params, opt, history


def _reference(history, start, every, weight_of):
    """The average from its definition: the first averaging step copies, later ones move by weight_of(n)."""
    averages = None
    n = 0
    for t, values in enumerate(history, start=1):
        k = t - start - 1
        if k < 0 or k % every:
            continue
        if n == 0:
            averages = [v.copy() for v in values]
        else:
            w = weight_of(n)
            averages = [a + (v - a) * w for a, v in zip(averages, values)]
        n += 1
    return averages


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
@pytest.mark.parametrize("start, every", [(0, 1), (3, 2)])
def test_ema_equals_its_definition(kind, start, every):
    params, opt, history = _run(optim.EMA(decay=0.9, start=start, every=every), kind)
    expected = _reference(history, start, every, lambda n: 1 - 0.9)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(opt.averaged_weights()[p], e, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(opt.state[p]["averaged"], e, rtol=1e-12, atol=1e-14)


def test_ema_warmup_follows_timms_ramp():
    settings = optim.EMA(decay=0.99, warmup=True, warmup_gamma=2.0, warmup_power=0.75, min_decay=0.1)
    params, opt, history = _run(settings, "Adam", steps=15)

    def weight(n):
        return 1 - min(max(1 - (1 + n / 2.0) ** -0.75, 0.1), 0.99)

    for p, e in zip(params, _reference(history, 0, 1, weight)):
        np.testing.assert_allclose(opt.averaged_weights()[p], e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("start, every", [(0, 1), (4, 3)])
def test_swa_is_the_running_mean_of_the_averaged_steps(start, every):
    params, opt, history = _run(optim.SWA(start=start, every=every), "SGD", momentum=0.9)
    averaged_steps = [v for t, v in enumerate(history, start=1) if t > start and (t - start - 1) % every == 0]
    for i, p in enumerate(params):
        np.testing.assert_allclose(opt.averaged_weights()[p], np.mean([v[i] for v in averaged_steps], axis=0),
                                   rtol=1e-12, atol=1e-14)


def test_before_the_first_averaging_step_the_average_is_the_parameter():
    params, opt, _ = _run(optim.SWA(start=20), steps=3)
    for p in params:
        np.testing.assert_array_equal(opt.averaged_weights()[p], p.data)


def test_a_tensor_without_gradient_keeps_its_average_and_count():
    params, opt, history = _run(optim.EMA(decay=0.5), steps=4, missing={(2, 1)})
    # w1 had no gradient at step 3: its average moved at steps 1, 2 and 4 only
    values = [h[1] for k, h in enumerate(history) if k != 2]
    expected = values[0]
    for v in values[1:]:
        expected = expected + (v - expected) * 0.5
    np.testing.assert_allclose(opt.averaged_weights()[params[1]], expected, rtol=1e-12)


def test_against_torch_averaged_model():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    for settings, avg_kwargs in [(optim.EMA(decay=0.95), dict(multi_avg_fn=get_ema_multi_avg_fn(0.95))),
                                 (optim.SWA(), {})]:
        ours = [graphopt.Parameter(a.copy()) for a in init]
        module = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init])
        averaged = AveragedModel(module, **avg_kwargs)
        opt = optim.Adam(ours, lr=0.01, averaging=settings)
        ref = torch.optim.Adam(module.parameters(), lr=0.01, foreach=False)
        for _ in range(25):
            grads = [rng.standard_normal(a.shape).astype(np.float32) for a in init]
            for p, q, g in zip(ours, module, grads):
                p.grad, q.grad = g, torch.from_numpy(g.copy())
            opt.step()
            ref.step()
            averaged.update_parameters(module)
        for p, q in zip(ours, averaged.module):
            np.testing.assert_allclose(opt.averaged_weights()[p], q.detach().numpy(), rtol=2e-5, atol=2e-6)


def test_the_average_is_checkpointed_and_a_resumed_run_continues_exactly(tmp_path):
    straight, opt, _ = _run(optim.EMA(decay=0.8), "Adam", steps=6, seed=1)
    params, resumed, _ = _run(optim.EMA(decay=0.8), "Adam", steps=3, seed=1)
    save_state_dict(resumed.state_dict(), tmp_path / "ckpt.npz")
    fresh_params, fresh, _ = _run(optim.EMA(decay=0.8), "Adam", steps=0, seed=1)
    for p, q in zip(fresh_params, params):
        p.data[...] = q.data
    fresh.load_state_dict(load_state_dict(tmp_path / "ckpt.npz"))
    rng = np.random.default_rng(1)
    for _ in range(4):  # the initial values and the first 3 steps' gradients that _run drew
        [rng.standard_normal(s) for s in SHAPES]
    for _ in range(3):
        for p in fresh_params:
            p.grad = rng.standard_normal(p.shape)
        fresh.step()
    for p, q in zip(fresh_params, straight):
        np.testing.assert_array_equal(fresh.averaged_weights()[p], opt.averaged_weights()[q])


def test_trainer_evaluates_and_exports_the_averaged_weights():
    rng = np.random.default_rng(4)
    trainer = graphopt.Trainer(linear_model(), losses.mse("y"), optim.SGD(lr=0.1, averaging=optim.SWA()))
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 4))
    weights = []
    for _ in range(5):
        trainer.step({"x": x}, labels=y)
        weights.append({n: p.data.copy() for n, p in trainer.parameters.items()})
    mean = {n: np.mean([w[n] for w in weights], axis=0) for n in weights[0]}
    np.testing.assert_allclose(trainer.evaluate({"x": x}, averaged=True)["y"], x @ mean["W"] + mean["b"],
                               rtol=1e-12)
    np.testing.assert_allclose(trainer.evaluate({"x": x})["y"], x @ weights[-1]["W"] + weights[-1]["b"], rtol=1e-12)
    model = trainer.export(kind="inference", averaged=True)
    from onnx import numpy_helper

    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(stored["W"], mean["W"], rtol=1e-12)
    with pytest.raises(ValueError, match="averaged=True is for kind='inference'"):
        trainer.export(kind="step", averaged=True)


@pytest.mark.parametrize("make, message", [
    (lambda: optim.EMA(decay=1.0), "min_decay <= decay < 1"), (lambda: optim.EMA(every=0), "'every' must be"),
    (lambda: optim.SWA(start=-1), "'start' must be an int >= 0"),
    (lambda: optim.SGD([graphopt.Parameter(np.ones(2))], lr=0.1, averaging=0.99), "averaging must be"),
    (lambda: optim.SGD([graphopt.Parameter(np.ones(2))], lr=0.1).averaged_weights(), "built without averaging"),
])
def test_bad_averaging_settings_are_refused(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()
