"""graphopt.optim.lr_scheduler against torch.optim.lr_scheduler: every scheduler's lrs (and cycled
momentum) step by step on several param groups, closed forms against the stepped values, chains,
SequentialLR, ReduceLROnPlateau, resuming mid-schedule (in memory and through graphopt.checkpoint)
on SGD, Adam and a Trainer, and the errors for bad arguments and bad state."""

from __future__ import annotations

import json
import math
import types
import warnings

import numpy as np
import pytest

import graphopt
from graphopt import checkpoint, optim
from graphopt.optim import lr_scheduler as G
from graphopt.optim.lr_scheduler import NoClosedForm

LRS = (0.1, 0.05, 0.3)
"""Three param groups with different lrs."""
STEPS = 300
REL = 1e-12


@pytest.fixture(scope="module")
def T():
    """torch's schedulers, SWALR included, as one namespace (the reference)."""
    torch = pytest.importorskip("torch")
    from torch.optim import lr_scheduler, swa_utils

    return types.SimpleNamespace(**{n: getattr(lr_scheduler, n) for n in lr_scheduler.__all__},
                                 SWALR=swa_utils.SWALR, torch=torch)


def torch_optimizer(T, kind, lrs=LRS, **kwargs):
    groups = [{"params": [T.torch.nn.Parameter(T.torch.zeros(2))], "lr": lr} for lr in lrs]
    return getattr(T.torch.optim, kind)(groups, **kwargs)


def graphopt_optimizer(kind, lrs=LRS, **kwargs):
    groups = [{"params": [graphopt.Parameter(np.zeros(2))], "lr": lr} for lr in lrs]
    return getattr(optim, kind)(groups, **kwargs)


OPTIMIZERS = {"SGD": dict(momentum=0.9), "Adam": dict(betas=(0.9, 0.999)), "RMSprop": dict(momentum=0.5)}


class Halving:
    """A callable object with state, which LambdaLR's state dict saves (its ``__dict__``)."""

    def __init__(self, every=25):
        self.every = every

    def __call__(self, epoch):
        return 0.5 ** (epoch // self.every)


class Decay:
    """A scale_fn object for CyclicLR."""

    def __init__(self, rate=0.97):
        self.rate = rate

    def __call__(self, x):
        return self.rate ** x


# name -> (make(L, optimizer) -> scheduler or list of schedulers on it, stepped in order)
CASES = {
    "StepLR": lambda L, o: L.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda L, o: L.MultiStepLR(o, milestones=[30, 3, 100, 100, 250], gamma=0.3),
    "ConstantLR": lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=20),
    "ConstantLR-defaults": lambda L, o: L.ConstantLR(o),
    "LinearLR": lambda L, o: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=40),
    "LinearLR-down": lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=150),
    "ExponentialLR": lambda L, o: L.ExponentialLR(o, gamma=0.99),
    "PolynomialLR": lambda L, o: L.PolynomialLR(o, total_iters=120, power=1.7),
    "PolynomialLR-sqrt": lambda L, o: L.PolynomialLR(o, total_iters=250, power=0.5),
    "CosineAnnealingLR": lambda L, o: L.CosineAnnealingLR(o, T_max=37, eta_min=0.001),
    "CosineAnnealingLR-0": lambda L, o: L.CosineAnnealingLR(o, T_max=100),
    "WarmRestarts": lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.002),
    "WarmRestarts-1": lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=17),
    "CyclicLR": lambda L, o: L.CyclicLR(o, base_lr=0.01, max_lr=[0.1, 0.2, 0.3], step_size_up=13, step_size_down=7,
                                        mode="triangular2", base_momentum=[0.8, 0.7, 0.6], max_momentum=0.95),
    "CyclicLR-exp": lambda L, o: L.CyclicLR(o, 0.01, 0.2, step_size_up=10, mode="exp_range", gamma=0.995),
    "CyclicLR-fn": lambda L, o: L.CyclicLR(o, 0.01, 0.2, step_size_up=9, scale_fn=Decay(), scale_mode="iterations",
                                           cycle_momentum=False),
    "OneCycleLR": lambda L, o: L.OneCycleLR(o, max_lr=[1.0, 0.5, 2.0], total_steps=STEPS + 20),
    "OneCycleLR-3": lambda L, o: L.OneCycleLR(o, 1.0, epochs=16, steps_per_epoch=20, pct_start=0.25,
                                              three_phase=True, anneal_strategy="linear", base_momentum=0.8,
                                              max_momentum=[0.9, 0.95, 0.99], div_factor=10.0,
                                              final_div_factor=100.0),
    "LambdaLR": lambda L, o: L.LambdaLR(o, lr_lambda=lambda e: 1 / (1 + 0.1 * e)),
    "LambdaLR-groups": lambda L, o: L.LambdaLR(o, [lambda e: 0.99 ** e, Halving(), lambda e: min(1.0, e / 10)]),
    "MultiplicativeLR": lambda L, o: L.MultiplicativeLR(o, lr_lambda=lambda e: 0.995 if e % 3 else 1.01),
    "SWALR": lambda L, o: L.SWALR(o, swa_lr=[0.05, 0.01, 0.2], anneal_epochs=20),
    "SWALR-linear": lambda L, o: L.SWALR(o, swa_lr=0.02, anneal_epochs=0, anneal_strategy="linear"),
    # several schedulers on one optimizer: their rescalings multiply
    "Step+Exp": lambda L, o: [L.StepLR(o, 10, 0.5), L.ExponentialLR(o, 0.995)],
    "Linear+Cos+MultiStep": lambda L, o: [L.LinearLR(o, 0.2, total_iters=30), L.CosineAnnealingLR(o, 80),
                                          L.MultiStepLR(o, [50, 150], 0.5)],
    "ChainedScheduler": lambda L, o: L.ChainedScheduler([L.ConstantLR(o, 0.5, 15), L.ExponentialLR(o, 0.99),
                                                         L.PolynomialLR(o, 200, 2.0)]),
    "ChainedScheduler-optimizer": lambda L, o: L.ChainedScheduler([L.StepLR(o, 30), L.LinearLR(o)], optimizer=o),
    "SequentialLR": lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.01, total_iters=20), L.CosineAnnealingLR(o, 200)],
                                                milestones=[20]),
    "SequentialLR-3": lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, 0.1, 10), L.ExponentialLR(o, 0.98),
                                                      L.StepLR(o, 25, 0.7)], milestones=[15, 120]),
    "SequentialLR-poly": lambda L, o: L.SequentialLR(o, [L.ExponentialLR(o, 0.9), L.PolynomialLR(o, 100, 1.5),
                                                         L.ConstantLR(o, 0.5, 1000)], milestones=[40, 180]),
}
MOMENTUM_CASES = {"CyclicLR", "CyclicLR-exp", "OneCycleLR", "OneCycleLR-3"}
NO_CLOSED_FORM = {"LambdaLR", "LambdaLR-groups", "MultiplicativeLR", "SWALR", "SWALR-linear"}
HAND_CHAINED = {"Step+Exp", "Linear+Cos+MultiStep"}


def as_list(schedulers):
    return schedulers if isinstance(schedulers, list) else [schedulers]


def group_values(optimizer):
    """What a scheduler may write, per group: lr, momentum, beta1."""
    return [(g["lr"], g.get("momentum"), g["betas"][0] if "betas" in g else None) for g in optimizer.param_groups]


def assert_close(got, expected, what):
    """Equal, or within 1e-12 relative (None only where None is expected)."""
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(got, expected)):
        if b is None or a is None:
            assert a is b, f"{what}[{i}]: {a!r} != {b!r}"
        else:
            assert float(a) == pytest.approx(float(b), rel=REL, abs=0), f"{what}[{i}]: {a!r} != {b!r}"


def assert_groups_close(got_optimizer, expected_optimizer, what):
    for g, (a, b) in enumerate(zip(group_values(got_optimizer), group_values(expected_optimizer))):
        assert_close(a, b, f"{what} group {g} (lr, momentum, beta1)")


# -- every scheduler against torch ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_schedule_equals_torch(T, case, kind):
    reference, ours = torch_optimizer(T, kind, **OPTIMIZERS[kind]), graphopt_optimizer(kind, **OPTIMIZERS[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: scheduler.step() before optimizer.step()
        expected, got = as_list(CASES[case](T, reference)), as_list(CASES[case](G, ours))
        momentums = set()
        for step in range(STEPS):
            assert_groups_close(ours, reference, f"{case} step {step}")
            momentums |= {values[1 if kind == "SGD" else 2] for values in group_values(ours)}
            assert_close(got[-1].get_last_lr(), expected[-1].get_last_lr(), f"{case} get_last_lr at step {step}")
            for s in expected:
                s.step()
            for s in got:
                s.step()
    if case in MOMENTUM_CASES:  # SGD's momentum or Adam's beta1 was cycled away from its setting
        assert len(momentums) > 10


def test_momentum_cycles_rmsprop_momentum(T):
    reference, ours = torch_optimizer(T, "RMSprop", momentum=0.5), graphopt_optimizer("RMSprop", momentum=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, got = CASES["CyclicLR"](T, reference), CASES["CyclicLR"](G, ours)
        for step in range(60):
            assert_groups_close(ours, reference, f"step {step}")
            expected.step()
            got.step()
    assert "betas" not in ours.param_groups[0] and ours.param_groups[0]["momentum"] != 0.5


def test_initial_lr_and_base_lrs_as_torch(T):
    reference, ours = torch_optimizer(T, "SGD"), graphopt_optimizer("SGD")
    for group in (reference.param_groups[1], ours.param_groups[1]):
        group["initial_lr"] = 0.7  # kept: setdefault, as torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, got = T.StepLR(reference, 3), G.StepLR(ours, 3)
    assert got.base_lrs == expected.base_lrs == [0.1, 0.7, 0.3]
    assert [g["initial_lr"] for g in ours.param_groups] == [g["initial_lr"] for g in reference.param_groups]
    cyclic, torch_cyclic = G.CyclicLR(ours, 0.01, 0.1), T.CyclicLR(reference, 0.01, 0.1)
    assert cyclic.base_lrs == torch_cyclic.base_lrs == [0.01] * 3
    assert [g["max_momentum"] for g in ours.param_groups] == [0.9] * 3


# -- closed forms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(set(CASES) - NO_CLOSED_FORM - HAND_CHAINED))
def test_closed_form_equals_stepped_values(case):
    optimizer = graphopt_optimizer("SGD", momentum=0.9)
    scheduler = CASES[case](G, optimizer)
    assert scheduler.has_closed_form
    scale = max(max(scheduler.base_lrs), max(g["lr"] for g in optimizer.param_groups))
    for step in range(STEPS):
        epoch = step
        expected = [g["lr"] for g in optimizer.param_groups]
        np.testing.assert_allclose(scheduler.closed_form(epoch), expected, rtol=REL, atol=REL * scale,
                                   err_msg=f"{case} epoch {epoch}")
        if case in MOMENTUM_CASES:
            np.testing.assert_allclose(scheduler.closed_form_momentum(epoch),
                                       [g["momentum"] for g in optimizer.param_groups], rtol=REL, atol=0)
        scheduler.step()


@pytest.mark.parametrize("case", ["StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
                                  "CosineAnnealingLR-0", "ChainedScheduler"])
def test_multiplicative_closed_forms_are_base_lr_times_a_multiplier(case):
    scheduler = CASES[case](G, graphopt_optimizer("SGD"))
    assert scheduler.multiplicative
    for epoch in (0, 1, 7, 40, 199):
        assert scheduler.closed_form(epoch) == [b * scheduler.multiplier(epoch) for b in scheduler.base_lrs]


def test_closed_forms_match_the_published_formulas():
    """Reference values written from each scheduler's formula (torch's docs), not from the code."""
    opt = graphopt_optimizer("SGD", lrs=(0.05,))
    e = 33
    assert G.StepLR(opt, 30, 0.1).closed_form(e) == pytest.approx([0.05 * 0.1])
    assert G.MultiStepLR(graphopt_optimizer("SGD", lrs=(0.05,)), [30, 80]).closed_form(85) == pytest.approx([5e-4])
    assert G.LinearLR(graphopt_optimizer("SGD", lrs=(0.05,)), 0.05, total_iters=40).closed_form(2) == \
        pytest.approx([0.05 * (0.05 + 0.95 * 2 / 40)])
    assert G.PolynomialLR(graphopt_optimizer("SGD", lrs=(0.05,)), 50, 0.9).closed_form(2) == \
        pytest.approx([0.05 * (1 - 2 / 50) ** 0.9])
    cosine = G.CosineAnnealingLR(graphopt_optimizer("SGD", lrs=(0.05,)), 10, 0.01)
    assert cosine.closed_form(4) == pytest.approx([0.01 + 0.04 * (1 + math.cos(math.pi * 0.4)) / 2])
    restarts = G.CosineAnnealingWarmRestarts(graphopt_optimizer("SGD", lrs=(0.05,)), 10, 2)
    assert restarts.closed_form(10 + 20 + 5) == pytest.approx([0.05 * (1 + math.cos(math.pi * 5 / 40)) / 2])
    cyclic = G.CyclicLR(graphopt_optimizer("SGD", lrs=(0.05,)), 0.1, 0.5, step_size_up=4, mode="triangular2")
    assert cyclic.closed_form(8 + 2) == pytest.approx([0.1 + 0.4 * 0.5 * 0.5])  # 2nd cycle: half height
    one = G.OneCycleLR(graphopt_optimizer("SGD", lrs=(0.05,)), max_lr=1.0, total_steps=100, anneal_strategy="linear")
    assert one.closed_form(29) == pytest.approx([1.0])  # the peak ends phase 1, at 0.3 * 100 - 1
    assert one.closed_form(99) == pytest.approx([1.0 / 25 / 1e4])


def test_schedulers_without_closed_form_say_so():
    for case in NO_CLOSED_FORM:
        scheduler = CASES[case](G, graphopt_optimizer("SGD"))
        assert not scheduler.has_closed_form
        with pytest.raises(NoClosedForm, match=type(scheduler).__name__):
            scheduler.closed_form(3)
    plateau = G.ReduceLROnPlateau(graphopt_optimizer("SGD"))
    assert not plateau.has_closed_form
    with pytest.raises(NoClosedForm):
        plateau.closed_form(3)
    o = graphopt_optimizer("SGD")
    chain = G.ChainedScheduler([G.StepLR(o, 3), G.CosineAnnealingWarmRestarts(o, 5)])
    assert not chain.has_closed_form
    with pytest.raises(NoClosedForm, match="CosineAnnealingWarmRestarts"):
        chain.closed_form(3)


# -- ReduceLROnPlateau ----------------------------------------------------------------------------


def metric_sequence(n, mode, seed):
    """Improving, then plateauing and noisy: every branch (better, bad, cooldown, reduce) is taken."""
    rng = np.random.default_rng(seed)
    trend = np.concatenate([np.linspace(10, 5, n // 3), np.full(n - n // 3, 5.0)])
    values = trend + 0.05 * rng.standard_normal(n) * (np.arange(n) % 5 == 0)
    return list(values if mode == "min" else -values)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode, threshold", [("rel", 1e-4), ("rel", 0.01), ("abs", 0.02)])
@pytest.mark.parametrize("settings", [dict(), dict(patience=3, cooldown=4, factor=0.5, min_lr=[0.01, 0.02, 0.001]),
                                      dict(patience=0, factor=0.3, min_lr=0.002, eps=1e-3)])
def test_reduce_on_plateau_equals_torch(T, mode, threshold_mode, threshold, settings):
    reference, ours = torch_optimizer(T, "Adam"), graphopt_optimizer("Adam")
    kwargs = dict(mode=mode, threshold_mode=threshold_mode, threshold=threshold, **settings)
    expected, got = T.ReduceLROnPlateau(reference, **kwargs), G.ReduceLROnPlateau(ours, **kwargs)
    reductions = 0
    for step, metric in enumerate(metric_sequence(STEPS, mode, seed=len(settings))):
        before = ours.param_groups[0]["lr"]
        expected.step(metric)
        got.step(metric)
        reductions += ours.param_groups[0]["lr"] != before
        assert_groups_close(ours, reference, f"step {step}")
        assert (got.best, got.num_bad_epochs, got.cooldown_counter, got.last_epoch) == \
            (expected.best, expected.num_bad_epochs, expected.cooldown_counter, expected.last_epoch)
        assert_close(got.get_last_lr(), expected.get_last_lr(), "get_last_lr")
    assert reductions > 0


# -- step(epoch) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
                                  "CosineAnnealingLR", "CyclicLR", "OneCycleLR", "LambdaLR-groups",
                                  "MultiplicativeLR", "SWALR"])
def test_step_with_epoch_warns_and_equals_torch(T, case):
    reference, ours = torch_optimizer(T, "SGD", momentum=0.9), graphopt_optimizer("SGD", momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, got = CASES[case](T, reference), CASES[case](G, ours)
    for epoch in (3, 1, 17, 7, 120, 40, 41, 299):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected.step(epoch)
        with pytest.warns(UserWarning, match="deprecated"):
            got.step(epoch)
        assert got.last_epoch == expected.last_epoch == epoch
        assert_groups_close(ours, reference, f"{case} step({epoch})")
        got.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected.step()
        assert_groups_close(ours, reference, f"{case} step() after step({epoch})")


def test_warm_restarts_take_fractional_epochs_without_warning(T):
    reference, ours = torch_optimizer(T, "SGD"), graphopt_optimizer("SGD")
    expected = T.CosineAnnealingWarmRestarts(reference, T_0=4, T_mult=3, eta_min=0.001)
    got = G.CosineAnnealingWarmRestarts(ours, T_0=4, T_mult=3, eta_min=0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in [i + b / 7 for i in range(60) for b in range(7)] + [3.5, 0, 100, 16, 52]:
            expected.step(epoch)
            got.step(epoch)
            assert_groups_close(ours, reference, f"step({epoch})")
            assert (got.T_i, got.last_epoch) == (expected.T_i, expected.last_epoch)
            assert got.T_cur == pytest.approx(expected.T_cur, rel=REL, abs=1e-12)


def test_warm_restarts_restart_exactly_where_the_logarithm_rounds_down():
    """Restarts of T_0=1, T_mult=10 are at 1, 11, 111; log10(1000) rounds to 2.9999999999999996, which
    makes torch's step(111) land at the end of the previous period (lr = eta_min) instead of a restart."""
    scheduler = G.CosineAnnealingWarmRestarts(graphopt_optimizer("SGD", lrs=(0.1,)), T_0=1, T_mult=10)
    scheduler.step(111)
    assert (scheduler.T_cur, scheduler.T_i) == (0, 1000)
    assert scheduler.get_last_lr() == [0.1] == scheduler.closed_form(111)


# -- chains and sequences ----------------------------------------------------------------------------


def test_chained_scheduler_equals_its_members_stepped_together():
    a, b = graphopt_optimizer("Adam"), graphopt_optimizer("Adam")
    members = [G.StepLR(a, 10, 0.5), G.ExponentialLR(a, 0.995)]
    chain = G.ChainedScheduler([G.StepLR(b, 10, 0.5), G.ExponentialLR(b, 0.995)])
    for _ in range(100):
        for s in members:
            s.step()
        chain.step()
        assert group_values(a) == group_values(b)
        assert chain.get_last_lr() == [g["lr"] for g in b.param_groups]


def test_sequential_lr_restarts_each_scheduler_at_its_milestone():
    optimizer = graphopt_optimizer("SGD", lrs=(1.0,))
    sequence = G.SequentialLR(optimizer, [G.ConstantLR(optimizer, 0.1, total_iters=100),
                                          G.ExponentialLR(optimizer, 0.5)], milestones=[3])
    lrs = [sequence.get_last_lr()[0]]
    for _ in range(5):
        sequence.step()
        lrs.append(sequence.get_last_lr()[0])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 1.0, 0.5, 0.25])


# -- resuming ------------------------------------------------------------------------------------------


RESUME_CASES = {
    **{name: CASES[name] for name in ("StepLR", "MultiStepLR", "LinearLR", "CosineAnnealingLR", "WarmRestarts",
                                      "CyclicLR", "CyclicLR-fn", "OneCycleLR", "LambdaLR-groups", "MultiplicativeLR",
                                      "SWALR", "Step+Exp", "ChainedScheduler", "SequentialLR-3")},
    "ReduceLROnPlateau": lambda L, o: L.ReduceLROnPlateau(o, patience=2, cooldown=1, factor=0.5, threshold=0.05,
                                                          min_lr=[1e-3, 0.0, 1e-2]),
}


def train(optimizer_kind, case, steps, resume_at=None, via=None, tmp_path=None):
    """A quadratic loss on three param groups: SGD/Adam steps with a scheduler; optionally saved after
    ``resume_at`` steps and continued by a new optimizer and scheduler loaded from that state."""
    rng = np.random.default_rng(0)
    shapes = [(3, 2), (4,), (2, 2)]
    targets = [rng.standard_normal(s) for s in shapes]
    values = [rng.standard_normal(s) for s in shapes]
    grads_noise = [[rng.standard_normal(s) * 0.1 for s in shapes] for _ in range(steps)]

    def build(values):
        params = [graphopt.Parameter(v.copy()) for v in values]
        groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
        optimizer = getattr(optim, optimizer_kind)(groups, **OPTIMIZERS[optimizer_kind])
        return params, optimizer, as_list(RESUME_CASES[case](G, optimizer))

    params, optimizer, schedulers = build(values)
    history = []
    for step in range(steps):
        if step == resume_at:
            saved = [optimizer.state_dict(), [s.state_dict() for s in schedulers]]
            if via == "checkpoint":
                checkpoint.save_state_dict(saved[0], tmp_path / "optimizer.npz")
                for i, s in enumerate(saved[1]):
                    checkpoint.save_state_dict(s, tmp_path / f"scheduler{i}.npz")
                saved = [checkpoint.load_state_dict(tmp_path / "optimizer.npz"),
                         [checkpoint.load_state_dict(tmp_path / f"scheduler{i}.npz") for i in range(len(schedulers))]]
            params, optimizer, schedulers = build([p.data for p in params])  # schedulers first, as in torch
            optimizer.load_state_dict(saved[0])
            for s, state in zip(schedulers, saved[1]):
                s.load_state_dict(state)
        loss = sum(float(np.sum((p.data - t) ** 2)) for p, t in zip(params, targets))
        for p, t, noise in zip(params, targets, grads_noise[step]):
            p.grad = 2 * (p.data - t) + noise
        optimizer.step()
        for s in schedulers:
            s.step(loss) if case == "ReduceLROnPlateau" else s.step()
        history.append(group_values(optimizer))
    return [p.data.copy() for p in params], history


@pytest.mark.parametrize("optimizer_kind", ["SGD", "Adam"])
@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resumed_run_equals_uninterrupted_run(case, optimizer_kind, tmp_path):
    steps, resume_at = 40, 17
    params, history = train(optimizer_kind, case, steps)
    for via in ("memory", "checkpoint"):
        resumed, resumed_history = train(optimizer_kind, case, steps, resume_at, via, tmp_path)
        assert resumed_history == history, via
        for a, b in zip(resumed, params):
            np.testing.assert_array_equal(a, b)
    assert len({h[0][0] for h in history}) > 1 or case == "ReduceLROnPlateau"


def test_scheduled_training_equals_torch(T):
    """The scheduled lr and cycled momentum reach the update: parameters as torch's, SGD and Adam."""
    rng = np.random.default_rng(3)
    start = rng.standard_normal((3, 4))
    for kind in ("SGD", "Adam"):
        p = graphopt.Parameter(start.copy())
        tp = T.torch.nn.Parameter(T.torch.tensor(start))
        ours = getattr(optim, kind)([{"params": [p], "lr": 0.01}], **OPTIMIZERS[kind])
        reference = getattr(T.torch.optim, kind)([{"params": [tp], "lr": 0.01}], **OPTIMIZERS[kind])
        got = G.ChainedScheduler([G.OneCycleLR(ours, 0.5, total_steps=50), G.ExponentialLR(ours, 0.99)])
        expected = T.ChainedScheduler([T.OneCycleLR(reference, 0.5, total_steps=50), T.ExponentialLR(reference, 0.99)])
        for _ in range(50):
            grad = np.sin(3 * p.data) + p.data
            p.grad = grad
            tp.grad = T.torch.tensor(grad)
            ours.step()
            reference.step()
            got.step()
            expected.step()
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)
        assert ours.sessions_built == 1  # lr and momentum changes never recompile


def test_optimizer_state_with_scheduler_keys_loads_before_the_scheduler_exists(T):
    """torch's resume pattern: load the optimizer, then make the scheduler with last_epoch (initial_lr loaded)."""
    ours, reference = graphopt_optimizer("SGD"), torch_optimizer(T, "SGD")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, torch_first = G.StepLR(ours, 5, 0.5), T.StepLR(reference, 5, 0.5)
        for _ in range(12):
            first.step()
            torch_first.step()
        fresh, torch_fresh = graphopt_optimizer("SGD"), torch_optimizer(T, "SGD")
        fresh.load_state_dict(ours.state_dict())
        torch_fresh.load_state_dict(reference.state_dict())
        assert [g["initial_lr"] for g in fresh.param_groups] == list(LRS)
        resumed, torch_resumed = G.StepLR(fresh, 5, 0.5, last_epoch=12), T.StepLR(torch_fresh, 5, 0.5, last_epoch=12)
        for step in range(20):
            assert_groups_close(fresh, torch_fresh, f"step {step}")
            resumed.step()
            torch_resumed.step()
        plain = graphopt_optimizer("SGD")  # and a state saved without a scheduler loads into one that has one
        G.ExponentialLR(plain, 0.9)
        plain.load_state_dict(graphopt_optimizer("SGD").state_dict())
        assert "initial_lr" in plain.param_groups[0]


@pytest.mark.parametrize("case", ["StepLR", "MultiStepLR", "CyclicLR", "OneCycleLR", "SequentialLR-3", "WarmRestarts",
                                  "LambdaLR-groups"])
def test_torch_state_dicts_load(T, case):
    reference, ours = torch_optimizer(T, "SGD", momentum=0.9), graphopt_optimizer("SGD", momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, got = CASES[case](T, reference), CASES[case](G, ours)
        for _ in range(23):
            expected.step()
        for group, torch_group in zip(ours.param_groups, reference.param_groups):
            group.update({k: v for k, v in torch_group.items() if k in group and k != "params"})
        got.load_state_dict(expected.state_dict())
        for step in range(50):
            assert_groups_close(ours, reference, f"step {step}")
            expected.step()
            got.step()


def test_plateau_torch_state_dict_loads(T):
    reference, ours = torch_optimizer(T, "SGD"), graphopt_optimizer("SGD")
    expected, got = T.ReduceLROnPlateau(reference, patience=1), G.ReduceLROnPlateau(ours, patience=1)
    for metric in (5, 4, 4, 4):
        expected.step(metric)
    got.load_state_dict(expected.state_dict())
    for g, tg in zip(ours.param_groups, reference.param_groups):
        g["lr"] = tg["lr"]
    for metric in (4, 4, 3, 3, 3, 3):
        expected.step(metric)
        got.step(metric)
        assert_groups_close(ours, reference, "after load")


def test_state_dicts_hold_plain_values_and_survive_a_checkpoint(tmp_path):
    optimizer = graphopt_optimizer("Adam")
    fn = Halving(every=3)
    lam = G.LambdaLR(optimizer, [lambda e: 1.0, fn, lambda e: 1.0])
    assert lam.state_dict()["lr_lambdas"] == [None, {"every": 3}, None]  # no callable, as torch saves
    schedulers = [lam, G.ReduceLROnPlateau(optimizer), G.MultiStepLR(optimizer, [5, 5, 2]),
                  G.SequentialLR(optimizer, [G.ConstantLR(optimizer), G.StepLR(optimizer, 2)], milestones=[4]),
                  G.OneCycleLR(optimizer, 0.1, 50), G.CyclicLR(optimizer, 0.01, 0.1, scale_fn=Decay())]
    for scheduler in schedulers:
        state = scheduler.state_dict()
        assert state["class"] == type(scheduler).__name__
        text = json.dumps(state)  # plain values only
        checkpoint.save_state_dict(state, tmp_path / "s.npz")
        loaded = checkpoint.load_state_dict(tmp_path / "s.npz")
        assert loaded == json.loads(text)
        scheduler.load_state_dict(loaded)
        assert scheduler.state_dict() == state or json.loads(json.dumps(scheduler.state_dict())) == loaded
    assert checkpoint.load_state_dict(tmp_path / "s.npz")["_scale_fn_custom"] == {"rate": 0.97}
    plateau = G.ReduceLROnPlateau(graphopt_optimizer("SGD"), mode="max")
    checkpoint.save_state_dict(plateau.state_dict(), tmp_path / "p.npz")
    assert checkpoint.load_state_dict(tmp_path / "p.npz")["best"] == -math.inf


def test_checkpoint_refuses_a_scheduler_state_with_a_callable(tmp_path):
    state = G.StepLR(graphopt_optimizer("SGD"), 3).state_dict()
    state["gamma"] = lambda e: e
    with pytest.raises(checkpoint.CheckpointError, match=r"\['gamma'\].*function"):
        checkpoint.save_state_dict(state, tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    state["gamma"] = 0.1
    state[3] = 1
    with pytest.raises(checkpoint.CheckpointError, match="must be a string"):
        checkpoint.save_state_dict(state, tmp_path / "s.npz")


# -- Trainer ---------------------------------------------------------------------------------------


def test_scheduler_drives_a_trainers_optimizer(T, tmp_path):
    from tests.test_trainer import numpy_gradients, regression_model

    model = regression_model()

    def run(resume_at=None):
        trainer = graphopt.Trainer(model, loss="loss", optimizer=optim.Adam(lr=0.01))
        scheduler = G.OneCycleLR(trainer.optimizer, max_lr=0.05, total_steps=30)
        rng = np.random.default_rng(1)
        lrs = []
        for step in range(30):
            if step == resume_at:
                checkpoint.save_state_dict(trainer.state_dict(), tmp_path / "trainer.npz")
                checkpoint.save_state_dict(scheduler.state_dict(), tmp_path / "scheduler.npz")
                trainer = graphopt.Trainer(model, loss="loss", optimizer=optim.Adam(lr=0.01))
                scheduler = G.OneCycleLR(trainer.optimizer, max_lr=0.05, total_steps=30)
                trainer.load_state_dict(checkpoint.load_state_dict(tmp_path / "trainer.npz"))
                scheduler.load_state_dict(checkpoint.load_state_dict(tmp_path / "scheduler.npz"))
            x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
            trainer.step({"x": x, "t": t})
            scheduler.step()
            lrs.append(group_values(trainer.optimizer))
        return trainer, lrs

    trainer, lrs = run()
    assert trainer.optimizer.sessions_built == (2 if trainer.fused_update else 1)  # lr changes never recompile
    # the same schedule as torch's on a torch Adam
    reference = torch_optimizer(T, "Adam", lrs=(0.01,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = T.OneCycleLR(reference, max_lr=0.05, total_steps=30)
        for step in range(30):
            expected.step()
            assert_close(lrs[step][0], group_values(reference)[0], f"step {step}")
    # the same parameters as the facade fed the same gradients under the same schedule
    params = {t.name: graphopt.Parameter(np.array(onnx_value(t)), name=t.name) for t in model.graph.initializer}
    mirror = optim.Adam(list(params.values()), lr=0.01)
    mirror_scheduler = G.OneCycleLR(mirror, max_lr=0.05, total_steps=30)
    rng = np.random.default_rng(1)
    for _ in range(30):
        x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
        grads, _ = numpy_gradients({n: p.data for n, p in params.items()}, x, t)
        for name, p in params.items():
            p.grad = grads[name]
        mirror.step()
        mirror_scheduler.step()
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, params[name].data, rtol=1e-9, atol=1e-12)
    resumed, resumed_lrs = run(resume_at=13)
    assert resumed_lrs == lrs
    for name, p in resumed.parameters.items():
        np.testing.assert_array_equal(p.data, trainer.parameters[name].data)


def onnx_value(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


# -- errors ------------------------------------------------------------------------------------------


def _o():
    return graphopt_optimizer("SGD")


BAD_ARGUMENTS = [
    (lambda: G.StepLR(_o(), 0), ValueError, "StepLR: step_size must be a positive integer"),
    (lambda: G.StepLR(_o(), 2.5), ValueError, "step_size"),
    (lambda: G.StepLR(object(), 3), TypeError, "not a graphopt optimizer"),
    (lambda: G.StepLR(types.SimpleNamespace(optimizer=_o()), 3), TypeError, "pass trainer.optimizer"),
    (lambda: G.StepLR(optim.SGD(None, lr=0.1), 3), ValueError, "no param groups"),
    (lambda: G.StepLR(_o(), 3, gamma="x"), ValueError, "gamma must be a finite real number"),
    (lambda: G.StepLR(_o(), 3, last_epoch=-2), ValueError, "last_epoch must be an integer >= -1"),
    (lambda: G.StepLR(_o(), 3, last_epoch=4), KeyError, "no 'initial_lr'"),
    (lambda: G.MultiStepLR(_o(), 5), TypeError, "milestones must be a list"),
    (lambda: G.MultiStepLR(_o(), [1, -2]), ValueError, "every milestone must be an integer >= 0"),
    (lambda: G.ConstantLR(_o(), factor=1.5), ValueError, r"factor must be in \(0, 1\]"),
    (lambda: G.ConstantLR(_o(), factor=0), ValueError, "factor"),
    (lambda: G.LinearLR(_o(), start_factor=0), ValueError, "start_factor"),
    (lambda: G.LinearLR(_o(), end_factor=1.5), ValueError, "end_factor"),
    (lambda: G.LinearLR(_o(), total_iters=0), ValueError, "total_iters must be a positive integer"),
    (lambda: G.PolynomialLR(_o(), total_iters=0), ValueError, "total_iters"),
    (lambda: G.CosineAnnealingLR(_o(), T_max=0), ValueError, "T_max"),
    (lambda: G.CosineAnnealingWarmRestarts(_o(), T_0=0), ValueError, "T_0"),
    (lambda: G.CosineAnnealingWarmRestarts(_o(), T_0=3, T_mult=0), ValueError, "T_mult"),
    (lambda: G.CosineAnnealingWarmRestarts(_o(), T_0=3, eta_min="0"), ValueError, "eta_min"),
    (lambda: G.CyclicLR(_o(), 0.1, 1.0, mode="bogus"), ValueError, "mode"),
    (lambda: G.CyclicLR(_o(), [0.1, 0.2], 1.0), ValueError, r"base_lr must have one value per param group \(3\)"),
    (lambda: G.CyclicLR(_o(), 0.1, 1.0, step_size_up=0), ValueError, "step_size_up"),
    (lambda: G.CyclicLR(_o(), 0.1, 1.0, scale_fn=3), TypeError, "scale_fn must be callable"),
    (lambda: G.CyclicLR(_o(), 0.1, 1.0, scale_mode="epoch"), ValueError, "scale_mode"),
    (lambda: G.OneCycleLR(_o(), 1.0), ValueError, "total_steps, or epochs and steps_per_epoch"),
    (lambda: G.OneCycleLR(_o(), 1.0, total_steps=0), ValueError, "total_steps"),
    (lambda: G.OneCycleLR(_o(), 1.0, 10, pct_start=1.5), ValueError, "pct_start"),
    (lambda: G.OneCycleLR(_o(), 1.0, 10, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda: G.ReduceLROnPlateau(_o(), factor=1.0), ValueError, "factor must be < 1.0"),
    (lambda: G.ReduceLROnPlateau(_o(), mode="avg"), ValueError, "mode"),
    (lambda: G.ReduceLROnPlateau(_o(), threshold_mode="x"), ValueError, "threshold_mode"),
    (lambda: G.ReduceLROnPlateau(_o(), min_lr=[0, 0]), ValueError, "min_lr must have one value per param group"),
    (lambda: G.ReduceLROnPlateau(_o(), patience=-1), ValueError, "patience"),
    (lambda: G.LambdaLR(_o(), [lambda e: 1] * 2), ValueError, "expected 3 lr_lambdas"),
    (lambda: G.LambdaLR(_o(), 0.5), TypeError, "must be callable"),
    (lambda: G.MultiplicativeLR(_o(), [lambda e: 1, 2, lambda e: 1]), TypeError, "param group 1 must be callable"),
    (lambda: G.SWALR(_o(), 0.1, anneal_strategy="exp"), ValueError, "anneal_strategy"),
    (lambda: G.SWALR(_o(), 0.1, anneal_epochs=-1), ValueError, "anneal_epochs"),
    (lambda: G.ChainedScheduler([]), ValueError, "at least one scheduler"),
    (lambda: G.ChainedScheduler([G.StepLR(_o(), 3), G.StepLR(_o(), 3)]), ValueError, "another optimizer"),
    (lambda: G.ChainedScheduler([G.ReduceLROnPlateau(_o())]), ValueError, "ReduceLROnPlateau"),
    (lambda: G.ChainedScheduler(["x"], optimizer=_o()), TypeError, "not a graphopt scheduler"),
]


@pytest.mark.parametrize("make, error, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_sequential_lr_errors():
    o = _o()
    with pytest.raises(ValueError, match="expected 1 milestones"):
        G.SequentialLR(o, [G.StepLR(o, 3), G.StepLR(o, 3)], milestones=[])
    with pytest.raises(ValueError, match="increasing"):
        G.SequentialLR(o, [G.StepLR(o, 3), G.StepLR(o, 3), G.StepLR(o, 3)], milestones=[5, 2])
    with pytest.raises(ValueError, match="another optimizer"):
        G.SequentialLR(o, [G.StepLR(o, 3), G.StepLR(_o(), 3)], milestones=[2])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        G.SequentialLR(o, [G.StepLR(o, 3), G.ReduceLROnPlateau(o)], milestones=[2])
    with pytest.raises(ValueError, match="composite"):
        G.SequentialLR(o, [G.StepLR(o, 3), G.ChainedScheduler([G.StepLR(o, 3)])], milestones=[2])


def test_one_cycle_past_total_steps_raises_and_changes_nothing():
    o = _o()
    scheduler = G.OneCycleLR(o, 1.0, total_steps=3)
    for _ in range(3):
        scheduler.step()
    before = (scheduler.state_dict(), group_values(o))
    with pytest.raises(ValueError, match="tried to step 4 times, but total_steps is 3"):
        scheduler.step()
    assert (scheduler.state_dict(), group_values(o)) == before


def test_get_lr_outside_step_warns_and_groups_added_later_are_refused():
    o = _o()
    scheduler = G.LambdaLR(o, lambda e: 0.9 ** e)
    with pytest.warns(UserWarning, match="get_last_lr"):
        scheduler.get_lr()
    o.add_param_group({"params": [graphopt.Parameter(np.zeros(1))], "lr": 0.1})
    with pytest.raises(RuntimeError, match="4 param groups, the scheduler computed 3"):
        scheduler.step()


def test_load_state_dict_refuses_bad_state_and_changes_nothing():
    o = _o()
    scheduler = G.StepLR(o, 3)
    scheduler.step()
    before = scheduler.state_dict()
    good = G.StepLR(_o(), 3).state_dict()
    bad_states = [
        (G.ExponentialLR(_o(), 0.9).state_dict(), ValueError, "from ExponentialLR, this scheduler is StepLR"),
        ({k: v for k, v in good.items() if k != "gamma"}, ValueError, r"missing \['gamma'\]"),
        ({**good, "surprise": 1}, ValueError, r"unexpected \['surprise'\]"),
        ({**good, "base_lrs": [0.1, 0.2]}, ValueError, "'base_lrs' must be a list of 3 numbers"),
        ({**good, "last_epoch": 1.5}, ValueError, "'last_epoch' must be a whole number"),
        ([1, 2], TypeError, "expected a dict"),
    ]
    for state, error, message in bad_states:
        with pytest.raises(error, match=message):
            scheduler.load_state_dict(state)
        assert scheduler.state_dict() == before
    chain_optimizer = _o()
    chain = G.ChainedScheduler([G.StepLR(chain_optimizer, 3), G.ExponentialLR(chain_optimizer, 0.9)])
    state = chain.state_dict()
    state["_schedulers"][1]["gamma"] = 0.5
    state["_schedulers"][0]["base_lrs"] = [1.0]
    with pytest.raises(ValueError, match="StepLR.load_state_dict: 'base_lrs'"):
        chain.load_state_dict(state)
    assert chain.state_dict()["_schedulers"][1]["gamma"] == 0.9  # nothing loaded, not even the valid member
    one_cycle = G.OneCycleLR(_o(), 1.0, total_steps=10)
    for bad, message in [({"_anneal_func_type": "cosine"}, "_anneal_func_type"),
                         ({"_schedule_phases": [{"end_step": 3}]}, r"'_schedule_phases'\[0\] must have"),
                         ({"total_steps": 0}, "total_steps")]:
        with pytest.raises(ValueError, match=message):
            one_cycle.load_state_dict({**one_cycle.state_dict(), **bad})
    plain = G.LambdaLR(_o(), lambda e: 1.0)
    with pytest.raises(ValueError, match="plain function"):
        plain.load_state_dict({**plain.state_dict(), "lr_lambdas": [{"every": 2}, None, None]})


def test_schedulers_added_mid_training_and_momentum_switched_on_equal_torch(T):
    """SGD without momentum under CyclicLR (which switches momentum on, as in torch), then SWALR taking over."""
    rng = np.random.default_rng(4)
    start = rng.standard_normal(5)
    p, tp = graphopt.Parameter(start.copy()), T.torch.nn.Parameter(T.torch.tensor(start))
    ours, reference = optim.SGD([p], lr=0.05), T.torch.optim.SGD([tp], lr=0.05)
    schedulers = [G.CyclicLR(ours, 0.01, 0.1, step_size_up=5)]
    torch_schedulers = [T.CyclicLR(reference, 0.01, 0.1, step_size_up=5)]
    for step in range(40):
        if step == 20:
            schedulers, torch_schedulers = [G.SWALR(ours, 0.02, anneal_epochs=5)], [T.SWALR(reference, 0.02, 5)]
        grad = np.cos(p.data) + 0.5 * p.data
        p.grad, tp.grad = grad, T.torch.tensor(grad)
        ours.step()
        reference.step()
        for s, ts in zip(schedulers, torch_schedulers):
            s.step()
            ts.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
        assert_groups_close(ours, reference, f"step {step}")


def test_checkpoint_refuses_a_malformed_scheduler_file(tmp_path):
    path = tmp_path / "s.npz"
    checkpoint.save_state_dict(G.StepLR(graphopt_optimizer("SGD"), 3).state_dict(), path)
    with np.load(path) as archive:
        meta = json.loads(archive["__meta__"].tobytes())
    meta["scheduler"] = [1, 2]
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(checkpoint.CheckpointError, match="'scheduler'.*expected dict"):
        checkpoint.load_state_dict(path)
