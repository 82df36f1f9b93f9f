"""Closed-form learning-rate schedules: the lr as a function of the step count, evaluated in
Python or compiled into the update and training-step graphs.

``opt.schedule_lr(schedules.Sequential([schedules.Linear(0.01, 1.0, 100), schedules.Cosine(900)],
milestones=[100]))`` makes every later update compute its group's lr inside the graph as
``schedule.lr(clock, initial_lr)``: ``clock`` is the number of steps taken since the schedule was
set (the input ``<group>.lr_clock``, which update and training-step models also output as
``<group>.lr_clock.new = clock + 1``), ``initial_lr`` the group's lr when it was set. So an
exported model follows the schedule in bare onnxruntime, feeding ``lr_clock.new`` back as
``lr_clock`` as it does every state output.

Each schedule is torch's scheduler of the same role, stepped once per optimizer step, written
in closed form (torch's own ``_get_closed_form_lr`` where it has one), with ``t`` the clock:

=========================  ===========================================================================
`Constant`                 ``base``
`Factor` (ConstantLR)      ``base * (multiplier if t < total_iters else 1)``
`Linear` (LinearLR)        ``base * (start + (end - start) * min(t, total_iters) / total_iters)``
`Step` (StepLR)            ``base * gamma ** floor(t / step_size)``
`MultiStep`                ``base * gamma ** (number of milestones <= t)``
`Exponential`              ``base * gamma ** t``
`Polynomial`               ``base * (1 - min(t, total_iters) / total_iters) ** power``
`Cosine`                   ``eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2``
`CosineWarmRestarts`       the same within each period ``T_i = T_0 * T_mult ** i``, ``t`` since its start
`OneCycle`                 torch's phases from ``max_lr / div_factor`` up to ``max_lr`` and down to
                           ``max_lr / (div_factor * final_div_factor)``, cosine or linear annealing
`Cyclic`                   ``base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale``, torch's three modes
`Sequential`               schedule ``k`` from milestone ``k - 1`` on, its clock restarted there
`Chained`                  ``base * product of the children's factors`` (multiplicative children)
=========================  ===========================================================================

A schedule given by a Python function (torch's LambdaLR, MultiplicativeLR) or by the loss
(ReduceLROnPlateau) has no closed form; those stay Python schedulers that set ``group["lr"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from graphopt import names
from graphopt.symbolic import Sym, maximum, minimum, where
from graphopt.transforms.base import Context, Transform, Updates

CLOCK, INITIAL_LR = "lr_clock", "initial_lr"  # the scheduled group's settings the graph reads


class _NumpyOps:
    """Scalar float64 arithmetic: the Python evaluation of a schedule."""

    floor, cos, log = staticmethod(np.floor), staticmethod(np.cos), staticmethod(np.log)
    minimum, maximum = staticmethod(np.minimum), staticmethod(np.maximum)

    @staticmethod
    def where(condition, a, b):
        return np.float64(a if condition else b)


class _GraphOps:
    """The same operations emitted into a graph (`Sym` scalars)."""

    @staticmethod
    def floor(x: Sym) -> Sym:
        return x.graph.unary("Floor", x)

    @staticmethod
    def cos(x: Sym) -> Sym:
        return x.graph.unary("Cos", x)

    @staticmethod
    def log(x: Sym) -> Sym:
        return x.graph.unary("Log", x)

    minimum, maximum, where = staticmethod(minimum), staticmethod(maximum), staticmethod(where)


NUMPY, GRAPH = _NumpyOps(), _GraphOps()


class Schedule:
    """A closed-form schedule: `lr` at clock ``t`` given the group's initial lr ``base``."""

    def lr(self, t: Any, base: Any, ops: Any = NUMPY) -> Any:
        return base * self.factor(t, ops)

    def factor(self, t: Any, ops: Any = NUMPY) -> Any:  # pragma: no cover - interface
        """``lr / base`` for a multiplicative schedule (the ones `Chained` composes)."""
        raise TypeError(f"{type(self).__name__} is not multiplicative: it has no factor to chain")

    @property
    def multiplicative(self) -> bool:
        """Whether the lr is ``base * factor(t)`` (what `Chained` composes)."""
        return type(self).factor is not Schedule.factor

    def value(self, t: int, base: float) -> float:
        """The lr at clock ``t``, in Python (float64)."""
        return float(self.lr(np.float64(t), np.float64(base), NUMPY))


def _positive_int(kind: str, key: str, value: Any, minimum_: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum_:
        raise ValueError(f"{kind}: {key!r} must be an int >= {minimum_}, got {value!r}")


def _number(kind: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{kind}: {key!r} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Constant(Schedule):
    """``base`` at every step."""

    def factor(self, t, ops=NUMPY):
        return t * 0.0 + 1.0


@dataclass(frozen=True)
class Factor(Schedule):
    """torch's ConstantLR: ``base * multiplier`` for the first ``total_iters`` steps, then ``base``."""

    multiplier: float = 1.0 / 3
    total_iters: int = 5

    def __post_init__(self):
        _number("Factor", "multiplier", self.multiplier)
        _positive_int("Factor", "total_iters", self.total_iters, 0)

    def factor(self, t, ops=NUMPY):
        return ops.where(t < float(self.total_iters), self.multiplier, 1.0)


@dataclass(frozen=True)
class Linear(Schedule):
    """torch's LinearLR: the factor goes linearly from ``start`` to ``end`` over ``total_iters`` steps."""

    start: float = 1.0 / 3
    end: float = 1.0
    total_iters: int = 5

    def __post_init__(self):
        if not 0 < self.start <= 1 or not 0 <= self.end <= 1:
            raise ValueError(f"Linear: need 0 < start <= 1 and 0 <= end <= 1, got {self.start!r}, {self.end!r}")
        _positive_int("Linear", "total_iters", self.total_iters)

    def factor(self, t, ops=NUMPY):
        return self.start + (self.end - self.start) * ops.minimum(t, float(self.total_iters)) / self.total_iters


@dataclass(frozen=True)
class Step(Schedule):
    """torch's StepLR: ``base * gamma ** floor(t / step_size)``."""

    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _positive_int("Step", "step_size", self.step_size)
        _number("Step", "gamma", self.gamma)

    def factor(self, t, ops=NUMPY):
        return self.gamma ** ops.floor(t / float(self.step_size))


@dataclass(frozen=True)
class MultiStep(Schedule):
    """torch's MultiStepLR: ``base * gamma ** (number of milestones <= t)`` (a repeated milestone
    counts as often as it appears, as in torch)."""

    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(sorted(self.milestones)))
        for m in self.milestones:
            _positive_int("MultiStep", "milestones", m, 0)
        _number("MultiStep", "gamma", self.gamma)

    def factor(self, t, ops=NUMPY):
        passed = t * 0.0
        for m in self.milestones:
            passed = passed + ops.where(t >= float(m), 1.0, 0.0)
        return self.gamma ** passed


@dataclass(frozen=True)
class Exponential(Schedule):
    """torch's ExponentialLR: ``base * gamma ** t``."""

    gamma: float

    def __post_init__(self):
        _number("Exponential", "gamma", self.gamma)

    def factor(self, t, ops=NUMPY):
        return self.gamma ** t


@dataclass(frozen=True)
class Polynomial(Schedule):
    """torch's PolynomialLR: ``base * (1 - min(t, total_iters) / total_iters) ** power``."""

    total_iters: int = 5
    power: float = 1.0

    def __post_init__(self):
        _positive_int("Polynomial", "total_iters", self.total_iters)
        _number("Polynomial", "power", self.power)

    def factor(self, t, ops=NUMPY):
        return (1.0 - ops.minimum(t, float(self.total_iters)) / self.total_iters) ** self.power


@dataclass(frozen=True)
class Cosine(Schedule):
    """torch's CosineAnnealingLR (its closed form): ``eta_min + (base - eta_min) * (1 + cos(pi t / T_max)) / 2``."""

    T_max: int
    eta_min: float = 0.0

    def __post_init__(self):
        _positive_int("Cosine", "T_max", self.T_max)
        _number("Cosine", "eta_min", self.eta_min)

    def lr(self, t, base, ops=NUMPY):
        return self.eta_min + (base - self.eta_min) * self._cosine(t, ops)

    def _cosine(self, t, ops):
        return (1.0 + ops.cos(math.pi * t / float(self.T_max))) / 2.0

    @property
    def multiplicative(self) -> bool:
        return self.eta_min == 0

    def factor(self, t, ops=NUMPY):
        if self.eta_min != 0:
            raise TypeError("Cosine with eta_min != 0 is not multiplicative")
        return self._cosine(t, ops)


@dataclass(frozen=True)
class CosineWarmRestarts(Schedule):
    """torch's CosineAnnealingWarmRestarts stepped once per step: the cosine over period ``i`` of length
    ``T_i = T_0 * T_mult ** i``, with ``t`` counted from the period's start."""

    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self):
        _positive_int("CosineWarmRestarts", "T_0", self.T_0)
        _positive_int("CosineWarmRestarts", "T_mult", self.T_mult)
        _number("CosineWarmRestarts", "eta_min", self.eta_min)

    def lr(self, t, base, ops=NUMPY):
        t0, mult = float(self.T_0), float(self.T_mult)
        if self.T_mult == 1:
            period = t * 0.0 + t0
            since = t - period * ops.floor(t / t0)
        else:
            def start(n):  # the step period n begins at
                return t0 * (mult ** n - 1.0) / (mult - 1.0)

            n = ops.floor(ops.log(t / t0 * (mult - 1.0) + 1.0) / math.log(mult))
            n = n + ops.where(t >= start(n + 1.0), 1.0, 0.0) - ops.where(t < start(n), 1.0, 0.0)  # log's rounding
            period, since = t0 * mult ** n, t - start(n)
        return self.eta_min + (base - self.eta_min) * (1.0 + ops.cos(math.pi * since / period)) / 2.0


@dataclass(frozen=True)
class OneCycle(Schedule):
    """torch's OneCycleLR (lr only; momentum cycling stays with the Python scheduler).

    ``ends`` and ``lrs`` (``initial, max, min``), when given, replace the phase ends and lrs computed
    from the other settings: a `graphopt.optim.lr_scheduler.OneCycleLR` passes the ones it holds.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    ends: tuple[float, ...] | None = None
    lrs: tuple[float, float, float] | None = None

    def __post_init__(self):
        _number("OneCycle", "max_lr", self.max_lr)
        _positive_int("OneCycle", "total_steps", self.total_steps)
        if not 0 <= self.pct_start <= 1:
            raise ValueError(f"OneCycle: 'pct_start' must be in [0, 1], got {self.pct_start!r}")
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycle: 'anneal_strategy' must be 'cos' or 'linear', got {self.anneal_strategy!r}")

    def _phases(self) -> list[tuple[float, float, float]]:
        """``(end_step, start_lr, end_lr)`` per phase, as torch builds them."""
        initial, peak, final = self.lrs or (self.max_lr / self.div_factor, self.max_lr,
                                            self.max_lr / self.div_factor / self.final_div_factor)
        up = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            ends = self.ends or (up, float(2 * self.pct_start * self.total_steps) - 2, self.total_steps - 1)
            return [(ends[0], initial, peak), (ends[1], peak, initial), (ends[2], initial, final)]
        ends = self.ends or (up, self.total_steps - 1)
        return [(ends[0], initial, peak), (ends[1], peak, final)]

    def _anneal(self, start, end, pct, ops):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (ops.cos(math.pi * pct) + 1.0)
        return (end - start) * pct + start

    def lr(self, t, base, ops=NUMPY):
        phases = self._phases()
        result, begin = None, 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            value = self._anneal(start_lr, end_lr, (t - begin) / (end_step - begin), ops)
            result = value if result is None else ops.where(t <= begin, result, value)
            begin = end_step
        return result


@dataclass(frozen=True)
class Cyclic(Schedule):
    """torch's CyclicLR with its modes ``triangular``, ``triangular2``, ``exp_range`` (lr only)."""

    base_lr: float
    max_lr: float
    step_size_up: float = 2000
    step_size_down: float | None = None
    mode: str = "triangular"
    gamma: float = 1.0

    def __post_init__(self):
        if self.mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(f"Cyclic: 'mode' must be triangular, triangular2 or exp_range, got {self.mode!r}")
        _number("Cyclic", "step_size_up", self.step_size_up)
        if self.step_size_up <= 0 or self.step_size_down is not None and not self.step_size_down >= 0:
            raise ValueError(f"Cyclic: need step_size_up > 0 and step_size_down >= 0, got {self.step_size_up!r}, "
                             f"{self.step_size_down!r}")

    def lr(self, t, base, ops=NUMPY):
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        total, ratio = up + down, up / (up + down)
        cycle = ops.floor(1.0 + t / total)
        x = 1.0 + t / total - cycle
        scale_factor = ops.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        height = (self.max_lr - self.base_lr) * scale_factor
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1.0 / (2.0 ** (cycle - 1.0))
        else:
            scale = self.gamma ** t
        return self.base_lr + height * scale


@dataclass(frozen=True)
class Sequential(Schedule):
    """torch's SequentialLR: ``schedules[k]`` from ``milestones[k - 1]`` on, its clock counted from there."""

    schedules: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "schedules", tuple(self.schedules))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"Sequential: expected {len(self.schedules) - 1} milestones for "
                             f"{len(self.schedules)} schedules, got {len(self.milestones)}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"Sequential: milestones must increase, got {self.milestones}")

    def lr(self, t, base, ops=NUMPY):
        result = self.schedules[0].lr(t, base, ops)
        for milestone, schedule in zip(self.milestones, self.schedules[1:]):
            result = ops.where(t >= float(milestone), schedule.lr(t - float(milestone), base, ops), result)
        return result


@dataclass(frozen=True)
class Chained(Schedule):
    """torch's ChainedScheduler of multiplicative schedules: the product of their factors."""

    schedules: tuple[Schedule, ...]

    def __post_init__(self):
        object.__setattr__(self, "schedules", tuple(self.schedules))
        for s in self.schedules:
            if not s.multiplicative:
                raise ValueError(f"Chained: {type(s).__name__} is not multiplicative; only schedules with a "
                                 "factor (Factor, Linear, Step, MultiStep, Exponential, Polynomial, Constant, "
                                 "Cosine with eta_min=0) chain")

    def factor(self, t, ops=NUMPY):
        result = self.schedules[0].factor(t, ops)
        for s in self.schedules[1:]:
            result = result * s.factor(t, ops)
        return result


@dataclass(frozen=True)
class ScheduledLearningRate(Transform):
    """First in a scheduled group's chain: the group's ``lr``, as every later transform reads it, is
    ``schedule.lr(lr_clock, initial_lr)`` computed in the graph; the model outputs ``lr_clock + 1``."""

    schedule: Schedule

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        clock = ctx.hyper(CLOCK)
        ctx.set_hyper("lr", self.schedule.lr(clock, ctx.hyper(INITIAL_LR), GRAPH))
        ctx.group_outputs[names.new(names.hyper(ctx.group, CLOCK))] = clock + 1.0
        return updates


__all__: Sequence[str] = [
    "Chained", "Constant", "Cosine", "CosineWarmRestarts", "Cyclic", "Exponential", "Factor", "Linear", "MultiStep",
    "OneCycle", "Polynomial", "Schedule", "ScheduledLearningRate", "Sequential", "Step",
]
