"""The chainable closed-form schedulers: each step rescales the current lr, and the result is a
function of the epoch count ``e`` alone: `schedule` gives it as a `graphopt.optim.schedules`
schedule, which ``closed_form`` and ``multiplier`` evaluate and `LRScheduler.compile` puts in the graph.

``step()`` rescales the current lr by the ratio of consecutive closed-form values, as torch's
chainable form does, so that several schedulers on one optimizer multiply; ``step(epoch)``
(deprecated) uses the closed form.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

from graphopt.optim import schedules as S
from graphopt.optim.schedulers.base import LRScheduler, nonnegative_int, positive_int, real


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (e // step_size)``: decay by ``gamma`` every ``step_size`` epochs."""

    _settings = ("step_size", "gamma")
    _closed_form_on_epoch = has_closed_form = multiplicative = True

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = positive_int("StepLR", "step_size", step_size)
        self.gamma = real("StepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Step(self.step_size, self.gamma)


class MultiStepLR(LRScheduler):
    """``lr = base_lr * gamma ** (number of milestones <= e)``: decay by ``gamma`` at each milestone
    (a milestone listed twice decays twice)."""

    _settings = ("milestones", "gamma")
    _closed_form_on_epoch = has_closed_form = multiplicative = True

    def __init__(self, optimizer: Any, milestones: Iterable[int], gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.milestones = _milestones("MultiStepLR", milestones)
        self.gamma = real("MultiStepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._current()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.MultiStep(tuple(self.milestones.elements()), self.gamma)

    def _saved(self, key: str) -> Any:
        if key == "milestones":  # a list (with repeats): a checkpoint's JSON has no integer keys
            return sorted(self.milestones.elements())
        return super()._saved(key)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        values["milestones"] = _milestones("MultiStepLR.load_state_dict", values["milestones"])
        return values


def _milestones(kind: str, milestones: Any) -> Counter:
    """Milestones as a Counter (epoch -> how many times listed), from a list or torch's Counter."""
    if isinstance(milestones, Mapping):
        milestones = Counter(milestones).elements()
    try:
        values = list(milestones)
    except TypeError:
        raise TypeError(f"{kind}: milestones must be a list of epochs, got {milestones!r}") from None
    return Counter(nonnegative_int(kind, "every milestone", m) for m in values)


class ConstantLR(LRScheduler):
    """``lr = base_lr * (factor if e < total_iters else 1)``."""

    _settings = ("factor", "total_iters")
    _closed_form_on_epoch = has_closed_form = multiplicative = True

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        if not 0 < real("ConstantLR", "factor", factor) <= 1:
            raise ValueError(f"ConstantLR: factor must be in (0, 1], got {factor!r}")
        self.factor = factor
        self.total_iters = nonnegative_int("ConstantLR", "total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        if self.last_epoch == 0:
            return [lr * self.factor for lr in self._current()]
        if self.last_epoch != self.total_iters:
            return self._current()
        return [lr * (1.0 / self.factor) for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Factor(self.factor, self.total_iters)


class LinearLR(LRScheduler):
    """``lr = base_lr * (start_factor + (end_factor - start_factor) * min(e, total_iters) / total_iters)``."""

    _settings = ("start_factor", "end_factor", "total_iters")
    _closed_form_on_epoch = has_closed_form = multiplicative = True

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        if not 0 < real("LinearLR", "start_factor", start_factor) <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor!r}")
        if not 0 <= real("LinearLR", "end_factor", end_factor) <= 1:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor!r}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = positive_int("LinearLR", "total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current()
        change = self.end_factor - self.start_factor
        ratio = 1.0 + change / (self.total_iters * self.start_factor + (self.last_epoch - 1) * change)
        return [lr * ratio for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Linear(self.start_factor, self.end_factor, self.total_iters)


class ExponentialLR(LRScheduler):
    """``lr = base_lr * gamma ** e``."""

    _settings = ("gamma",)
    _closed_form_on_epoch = has_closed_form = multiplicative = True

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = real("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        if self._is_initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Exponential(self.gamma)


class PolynomialLR(LRScheduler):
    """``lr = base_lr * (1 - min(e, total_iters) / total_iters) ** power``."""

    _settings = ("total_iters", "power")
    _closed_form_on_epoch = has_closed_form = multiplicative = True

    def __init__(self, optimizer: Any, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1) -> None:
        self.total_iters = positive_int("PolynomialLR", "total_iters", total_iters)
        self.power = real("PolynomialLR", "power", power)
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current()
        e, total = self.last_epoch, self.total_iters
        ratio = ((1.0 - e / total) / (1.0 - (e - 1) / total)) ** self.power
        return [lr * ratio for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Polynomial(self.total_iters, self.power)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * e / T_max)) / 2`` (periodic past ``T_max``,
    as torch's chainable form is).

    The chainable step: ``lr' = eta_min + (lr - eta_min) * (1 + cos(pi e / T)) / (1 + cos(pi (e-1) / T))``,
    except at ``e = T_max + 1 (mod 2 T_max)``, where the ratio is 0/0: there
    ``lr' = lr + (base_lr - eta_min) * (1 - cos(pi / T)) / 2``.
    """

    _settings = ("T_max", "eta_min")
    _closed_form_on_epoch = has_closed_form = True

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:  # noqa: N803
        self.T_max = positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = real("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    @property
    def multiplicative(self) -> bool:  # type: ignore[override]
        return self.eta_min == 0

    def _next_lrs(self) -> list[float]:
        e, T, eta = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current()
        if self._step_count == 1 and e > 0:
            return self.closed_form(e)
        if (e - 1 - T) % (2 * T) == 0:
            return [lr + (base_lr - eta) * (1 - math.cos(math.pi / T)) / 2
                    for base_lr, lr in zip(self.base_lrs, self._current())]
        ratio = (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
        return [ratio * (lr - eta) + eta for lr in self._current()]

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Cosine(self.T_max, self.eta_min)
