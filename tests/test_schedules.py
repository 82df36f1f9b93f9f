"""Closed-form lr schedules compiled into the update graphs (issue 11, item 3), against torch's
schedulers, and exported models that follow them in bare onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import names, optim
from graphopt.optim import schedules as S
from tests.test_trainer_features import linear_model  # here, not in a test: its generator is reseeded per test

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

BASE = 0.1
STEPS = 300
# (ours, torch's scheduler given an optimizer)
CASES = {
    "constant": (S.Constant(), lambda o: lr_scheduler.LambdaLR(o, lambda e: 1.0)),
    "factor": (S.Factor(multiplier=0.5, total_iters=4), lambda o: lr_scheduler.ConstantLR(o, 0.5, total_iters=4)),
    "linear": (S.Linear(0.25, 1.0, 10), lambda o: lr_scheduler.LinearLR(o, 0.25, 1.0, total_iters=10)),
    "step": (S.Step(7, 0.5), lambda o: lr_scheduler.StepLR(o, 7, 0.5)),
    "multistep": (S.MultiStep((30, 80, 80, 150), 0.5),
                  lambda o: lr_scheduler.MultiStepLR(o, [30, 80, 80, 150], 0.5)),
    "exponential": (S.Exponential(0.98), lambda o: lr_scheduler.ExponentialLR(o, 0.98)),
    "polynomial": (S.Polynomial(100, 2.0), lambda o: lr_scheduler.PolynomialLR(o, 100, 2.0)),
    "cosine": (S.Cosine(100, 0.001), lambda o: lr_scheduler.CosineAnnealingLR(o, 100, 0.001)),
    "warm_restarts": (S.CosineWarmRestarts(10, 2, 0.0005),
                      lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 10, 2, 0.0005)),
    "warm_restarts_1": (S.CosineWarmRestarts(13), lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 13)),
    "one_cycle": (S.OneCycle(0.5, STEPS), lambda o: lr_scheduler.OneCycleLR(o, 0.5, STEPS, cycle_momentum=False)),
    "one_cycle_3": (S.OneCycle(0.5, STEPS, pct_start=0.2, anneal_strategy="linear", three_phase=True),
                    lambda o: lr_scheduler.OneCycleLR(o, 0.5, STEPS, pct_start=0.2, anneal_strategy="linear",
                                                      three_phase=True, cycle_momentum=False)),
    "cyclic": (S.Cyclic(0.01, 0.1, 20, 30), lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 20, 30,
                                                                           cycle_momentum=False)),
    "cyclic2": (S.Cyclic(0.01, 0.1, 15, mode="triangular2"),
                lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 15, mode="triangular2", cycle_momentum=False)),
    "cyclic_exp": (S.Cyclic(0.01, 0.1, 15, mode="exp_range", gamma=0.995),
                   lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 15, mode="exp_range", gamma=0.995,
                                                   cycle_momentum=False)),
    "warmup_cosine": (S.Sequential([S.Linear(0.1, 1.0, 20), S.Cosine(280, 0.0)], milestones=[20]),
                      lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.1, 1.0, 20),
                                                              lr_scheduler.CosineAnnealingLR(o, 280)], [20])),
    "chained": (S.Chained([S.Step(25, 0.5), S.Exponential(0.99)]),
                lambda o: lr_scheduler.ChainedScheduler([lr_scheduler.StepLR(o, 25, 0.5),
                                                         lr_scheduler.ExponentialLR(o, 0.99)])),
}


def torch_lrs(make) -> list[float]:
    """torch's lr for each of STEPS optimizer steps (its scheduler stepped after each)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE)
    scheduler = make(opt)
    lrs = []
    for _ in range(STEPS):
        lrs.append(scheduler.get_last_lr()[0])
        opt.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("case", list(CASES))
def test_python_values_equal_torchs_schedulers(case):
    schedule, make = CASES[case]
    ours = [schedule.value(t, BASE) for t in range(STEPS)]
    np.testing.assert_allclose(ours, torch_lrs(make), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", ["chunked", "per_tensor"])
def test_the_graph_computes_torchs_lr_at_every_step(case, path):
    """SGD on float64 parameters with gradient 1: each step moves a parameter by exactly the lr used."""
    schedule, make = CASES[case]
    params = [graphopt.Parameter(np.zeros(3)), graphopt.Parameter(np.zeros(2))]
    opt = optim.SGD(params, lr=BASE)
    opt.schedule_lr(schedule)
    used = []
    for step in range(STEPS):
        before = params[0].data.copy()
        for p in params:
            p.grad = np.ones(p.shape)
        if path == "per_tensor" and step % 2:
            params[1].grad = None
        assert opt.param_groups[0]["lr"] == pytest.approx(schedule.value(step, BASE), rel=1e-12, abs=1e-18)
        opt.step()
        used.append(before[0] - params[0].data[0])
    assert opt.param_groups[0]["lr_clock"] == STEPS
    np.testing.assert_allclose(used, torch_lrs(make), rtol=1e-9, atol=1e-12)


def test_an_exported_update_follows_its_schedule_in_bare_onnxruntime():
    schedule = CASES["warmup_cosine"][0]
    rng = np.random.default_rng(0)
    params = [graphopt.Parameter(rng.standard_normal((4, 3)), name="w"), graphopt.Parameter(np.zeros(5), name="b")]
    opt = optim.Adam(params, lr=0.05, weight_decay=0.01)
    opt.schedule_lr(schedule)
    model = opt.export()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    state = {p.name: p.data.copy() for p in params}
    state.update({names.step(p.name): np.array(0.0) for p in params})
    state.update({names.state(p.name, s): np.zeros(p.shape) for p in params for s in ("exp_avg", "exp_avg_sq")})
    state.update({names.hyper("group0", k): np.array(float(v)) for k, v in opt._hyperparameters(  # noqa: SLF001
        opt.param_groups[0]).items()})
    outputs = [o.name for o in session.get_outputs()]
    assert names.new("group0.lr_clock") in outputs
    for _ in range(STEPS):
        grads = {p.name: rng.standard_normal(p.shape) for p in params}
        for p in params:
            p.grad = grads[p.name]
        opt.step()
        feeds = {k: v for k, v in state.items() if k in inputs}
        feeds.update({names.grad(k): g for k, g in grads.items()})
        results = dict(zip(outputs, session.run(None, feeds)))
        state.update({name.removesuffix(names.NEW): value for name, value in results.items()})
    assert float(state["group0.lr_clock"]) == STEPS
    for p in params:
        np.testing.assert_allclose(state[p.name], p.data, rtol=1e-12, atol=1e-14)


def test_a_trainers_exported_training_step_follows_its_schedule():
    from graphopt.training import losses

    model = linear_model()
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.05, momentum=0.9))
    trainer.optimizer.schedule_lr(S.OneCycle(0.2, STEPS))
    session = graphopt.TrainingSession(trainer.export(kind="training_info"))
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 4))
        trainer.step({"x": x}, labels=y)
        session.step({"x": x, "labels": y})
    assert float(session.state["group0.lr_clock"]) == STEPS == trainer.optimizer.param_groups[0]["lr_clock"]
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(session.state[name], p.data, rtol=1e-10, atol=1e-12)


def test_a_resumed_schedule_continues_exactly():
    schedule = CASES["warm_restarts"][0]

    def make():
        p = graphopt.Parameter(np.linspace(-1, 1, 6))
        opt = optim.Adam([p], lr=0.02)
        opt.schedule_lr(schedule)
        return p, opt

    (p, opt), (q, resumed) = make(), make()
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(6) for _ in range(40)]
    for g in grads[:17]:
        p.grad = q.grad = g
        opt.step()
        resumed.step()
    saved = resumed.state_dict()
    r, fresh = make()
    r.data[...] = q.data
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr_clock"] == 17
    for g in grads[17:]:
        p.grad = r.grad = g
        opt.step()
        fresh.step()
    np.testing.assert_array_equal(r.data, p.data)


def test_stopping_a_schedule_keeps_the_last_lr_and_reads_lr_again():
    p = graphopt.Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=1.0)
    opt.schedule_lr(S.Exponential(0.5))
    for _ in range(3):
        p.grad = np.ones(2)
        opt.step()
    opt.schedule_lr(None)
    assert opt.param_groups[0]["lr"] == 0.125 and "lr_clock" not in opt.param_groups[0]
    p.grad = np.ones(2)
    opt.step()
    np.testing.assert_allclose(p.data, -(1 + 0.5 + 0.25 + 0.125) * np.ones(2))


@pytest.mark.parametrize("make, error", [
    (lambda: S.Step(0), "'step_size' must be an int >= 1"), (lambda: S.Linear(0.0), "0 < start <= 1"),
    (lambda: S.Sequential([S.Constant()], milestones=[3]), "expected 0 milestones"),
    (lambda: S.Chained([S.Cosine(10, eta_min=0.1)]), "Cosine is not multiplicative"),
    (lambda: S.OneCycle(0.1, 10, anneal_strategy="cubic"), "'anneal_strategy'"),
    (lambda: optim.SGD([graphopt.Parameter(np.zeros(1))], lr=0.1).schedule_lr(lambda t: 0.1), "expected a graphopt"),
])
def test_bad_schedules_are_refused(make, error):
    with pytest.raises((ValueError, TypeError), match=error):
        make()


# torch-style schedulers (graphopt.optim.lr_scheduler) compiled into the graph
COMPILABLE = {
    "step": lambda L, o: L.StepLR(o, 7, 0.5),
    "multistep": lambda L, o: L.MultiStepLR(o, [30, 80, 80, 150], 0.5),
    "constant": lambda L, o: L.ConstantLR(o, 0.5, total_iters=4),
    "linear": lambda L, o: L.LinearLR(o, 0.25, 1.0, total_iters=10),
    "exponential": lambda L, o: L.ExponentialLR(o, 0.98),
    "polynomial": lambda L, o: L.PolynomialLR(o, 100, 2.0),
    "cosine": lambda L, o: L.CosineAnnealingLR(o, 100, 0.001),
    "warm_restarts": lambda L, o: L.CosineAnnealingWarmRestarts(o, 10, 2, 0.0005),
    "one_cycle": lambda L, o: L.OneCycleLR(o, 0.5, STEPS, pct_start=0.25, cycle_momentum=False),
    "cyclic": lambda L, o: L.CyclicLR(o, 0.01, 0.1, 20, 30, mode="triangular2", cycle_momentum=False),
    "sequential": lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 20), L.CosineAnnealingLR(o, 280)], [20]),
    "chained": lambda L, o: L.ChainedScheduler([L.StepLR(o, 25, 0.5), L.ExponentialLR(o, 0.99)]),
}


@pytest.mark.parametrize("case", list(COMPILABLE))
def test_compiled_python_schedulers_follow_torchs_lr_in_the_graph(case):
    from graphopt.optim import lr_scheduler as ours

    make = COMPILABLE[case]
    params = [graphopt.Parameter(np.zeros(3)), graphopt.Parameter(np.zeros(2))]
    opt = optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.05}], lr=BASE)
    scheduler = make(ours, opt)
    for _ in range(3):  # stepped in Python first: the compiled clock starts where it stands
        for p in params:
            p.grad = np.ones(p.shape)
        opt.step()
        scheduler.step()
    scheduler.compile()
    used = [[], []]
    for _ in range(STEPS - 3):
        before = [p.data[0] for p in params]
        for p in params:
            p.grad = np.ones(p.shape)
        opt.step()
        for g, p in enumerate(params):
            used[g].append(before[g] - p.data[0])
    param = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    reference = torch.optim.SGD([{"params": param[:1]}, {"params": param[1:], "lr": 0.05}], lr=BASE)
    theirs = make(lr_scheduler, reference)
    expected = [[], []]
    for step in range(STEPS):
        if step >= 3:
            for g, lr in enumerate(theirs.get_last_lr()):
                expected[g].append(lr)
        reference.step()
        theirs.step()
    for g in range(2):
        np.testing.assert_allclose(used[g], expected[g], rtol=1e-9, atol=1e-12, err_msg=f"group {g}")
    assert scheduler.get_last_lr() == [group["lr"] for group in opt.param_groups]
    with pytest.raises(RuntimeError, match="compiled into the update graphs"):
        scheduler.step()


def test_schedulers_without_a_closed_form_refuse_to_compile_and_export_says_so():
    from graphopt.optim import lr_scheduler as ours

    p = graphopt.Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=0.1)
    lam = ours.LambdaLR(opt, lambda e: 0.9 ** e)
    with pytest.raises(ours.NoClosedForm, match="LambdaLR has no closed form"):
        lam.compile()
    assert "lr_clock" not in opt.param_groups[0]
    with pytest.warns(UserWarning, match="LambdaLR sets the lr in Python; the exported model reads it from its "
                                         "input group<g>.lr.*no closed form"):
        opt.export()
    cyclic = ours.CyclicLR(opt, 0.01, 0.1, 10)  # cycles SGD's momentum by default
    with pytest.raises(ours.NoClosedForm, match="momentum cycling stays in Python"):
        cyclic.compile()
