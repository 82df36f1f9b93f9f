"""Schedules that cycle: `CyclicLR`, `OneCycleLR` (both also cycle momentum) and
`CosineAnnealingWarmRestarts`. Each step sets the lr from the closed form (nothing is rescaled).

Momentum cycling writes SGD's and RMSprop's ``momentum`` or Adam's ``betas[0]`` (whichever the
optimizer's defaults have), as torch does.
"""

from __future__ import annotations

import copy
import math
import types
from typing import Any, Callable, Sequence

from graphopt.optim import schedules as S
from graphopt.optim.schedulers.base import (
    LRScheduler,
    NoClosedForm,
    checked_optimizer,
    one_of,
    per_group,
    positive_int,
    real,
)


def _momentum_key(kind: str, optimizer: Any, cycle_momentum: bool) -> bool:
    """True if the optimizer's momentum is ``betas[0]`` (Adam), False for ``momentum`` (SGD, RMSprop)."""
    if cycle_momentum and "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(f"{kind}: cycle_momentum needs an optimizer with 'momentum' or 'betas'; "
                         f"{type(optimizer).__name__} has neither (pass cycle_momentum=False)")
    return "betas" in optimizer.defaults


def _write_momentum(groups: list[dict[str, Any]], momentums: Sequence[float], use_beta1: bool) -> None:
    for group, momentum in zip(groups, momentums):
        if use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


class CyclicLR(LRScheduler):
    """Triangular cycles between ``base_lr`` and ``max_lr`` (Smith, 2017).

    With ``c = floor(1 + e / (up + down))``, ``x = 1 + e / (up + down) - c`` and
    ``s = x / r`` if ``x <= r`` else ``(x - 1) / (r - 1)`` (``r = up / (up + down)``):
    ``lr = base_lr + (max_lr - base_lr) * s * f``, ``momentum = max_momentum - (max_momentum - base_momentum) * s * f``,
    where ``f = scale_fn(c)`` (scale_mode 'cycle') or ``scale_fn(e)`` ('iterations'); mode 'triangular':
    ``f = 1``, 'triangular2': ``f = 1 / 2 ** (c - 1)``, 'exp_range': ``f = gamma ** e``.
    """

    _settings = ("max_lrs", "total_size", "step_ratio", "mode", "gamma", "scale_mode", "cycle_momentum",
                 "use_beta1", "base_momentums", "max_momentums", "_scale_fn_custom")
    _optional = frozenset({"use_beta1", "base_momentums", "max_momentums"})
    has_closed_form = True

    def __init__(self, optimizer: Any, base_lr: float | Sequence[float], max_lr: float | Sequence[float],
                 step_size_up: int = 2000, step_size_down: int | None = None, mode: str = "triangular",
                 gamma: float = 1.0, scale_fn: Callable[[float], float] | None = None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float | Sequence[float] = 0.8,
                 max_momentum: float | Sequence[float] = 0.9, last_epoch: int = -1) -> None:
        kind = "CyclicLR"
        optimizer = checked_optimizer(optimizer, kind)
        base_lrs = per_group(kind, "base_lr", base_lr, optimizer)
        self.max_lrs = per_group(kind, "max_lr", max_lr, optimizer)
        up = float(real(kind, "step_size_up", step_size_up))
        down = up if step_size_down is None else float(real(kind, "step_size_down", step_size_down))
        if up <= 0 or down < 0:
            raise ValueError(f"{kind}: step_size_up must be > 0 and step_size_down >= 0, got {step_size_up!r} "
                             f"and {step_size_down!r}")
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if scale_fn is None:
            one_of(kind, "mode (without a scale_fn)", mode, ("triangular", "triangular2", "exp_range"))
        elif not callable(scale_fn):
            raise TypeError(f"{kind}: scale_fn must be callable, got {type(scale_fn).__name__}")
        self.mode, self.gamma = mode, real(kind, "gamma", gamma)
        self._scale_fn_custom = scale_fn
        self.scale_mode = one_of(kind, "scale_mode", scale_mode, ("cycle", "iterations"))
        self._init_scale_fn()
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = _momentum_key(kind, optimizer, self.cycle_momentum)
        self.base_momentums = per_group(kind, "base_momentum", base_momentum, optimizer)
        self.max_momentums = per_group(kind, "max_momentum", max_momentum, optimizer)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                group["lr"] = lr
        if self.cycle_momentum:
            if last_epoch == -1:
                _write_momentum(optimizer.param_groups, self.max_momentums, self.use_beta1)
                for group, low, high in zip(optimizer.param_groups, self.base_momentums, self.max_momentums):
                    group["max_momentum"], group["base_momentum"] = high, low
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        """The built-in modes fix scale_mode: 'cycle' for the triangular ones, 'iterations' for exp_range."""
        if self._scale_fn_custom is None:
            self.scale_mode = "iterations" if self.mode == "exp_range" else "cycle"

    def scale_fn(self, x: float) -> float:
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma ** x

    def _position(self, epoch: float) -> tuple[float, float]:
        """``(s * f)`` factors: the height fraction ``s`` and the scale ``f`` at ``epoch``."""
        cycle = math.floor(1 + epoch / self.total_size)
        x = 1.0 + epoch / self.total_size - cycle
        height = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        return height, self.scale_fn(cycle if self.scale_mode == "cycle" else epoch)

    def schedule(self, group: int = 0) -> S.Schedule:
        if self._scale_fn_custom is not None:
            raise NoClosedForm("CyclicLR: a custom scale_fn is a Python function; only the built-in modes compile")
        up = self.step_ratio * self.total_size
        return S.Cyclic(self.base_lrs[group], self.max_lrs[group], up, self.total_size - up, self.mode, self.gamma)

    def closed_form(self, epoch: float) -> list[float]:
        height, scale = self._position(epoch)
        return [base_lr + (max_lr - base_lr) * height * scale for base_lr, max_lr in zip(self.base_lrs, self.max_lrs)]

    def closed_form_momentum(self, epoch: float) -> list[float]:
        """Every group's momentum (or beta1) at ``epoch``."""
        height, scale = self._position(epoch)
        return [high - (high - low) * height * scale for low, high in zip(self.base_momentums, self.max_momentums)]

    def _next_lrs(self) -> list[float]:
        if self.cycle_momentum:
            _write_momentum(self.optimizer.param_groups, self.closed_form_momentum(self.last_epoch), self.use_beta1)
        return self.closed_form(self.last_epoch)

    def _saved(self, key: str) -> Any:
        if key == "_scale_fn_custom":
            fn = self._scale_fn_custom
            return None if fn is None or isinstance(fn, types.FunctionType) else copy.deepcopy(fn.__dict__)
        return super()._saved(key)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        where = "CyclicLR.load_state_dict"
        if self._scale_fn_custom is None:
            one_of(where, "mode", values["mode"], ("triangular", "triangular2", "exp_range"))
        one_of(where, "scale_mode", values["scale_mode"], ("cycle", "iterations"))
        saved = values["_scale_fn_custom"]
        if saved is not None and (not isinstance(saved, dict) or self._scale_fn_custom is None):
            raise ValueError(f"{where}: '_scale_fn_custom' holds a callable object's attributes, but this "
                             "scheduler has no such scale_fn")
        return values

    def _apply(self, values: dict[str, Any]) -> None:
        saved = values.pop("_scale_fn_custom")
        super()._apply(values)
        if saved is not None:
            self._scale_fn_custom.__dict__.update(saved)
        self._init_scale_fn()


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin, 2018): from ``initial_lr = max_lr / div_factor`` up to ``max_lr``,
    then down to ``min_lr = initial_lr / final_div_factor``, over ``total_steps`` steps.

    Phases end at ``pct_start * total - 1`` and ``total - 1`` (three_phase: ``pct_start * total - 1``,
    ``2 * pct_start * total - 2`` and ``total - 1``, the second back down to ``initial_lr``). Within a phase
    from step ``a`` to ``b``, ``p = (e - a) / (b - a)`` and the lr goes from ``start`` to ``end``:
    'cos': ``end + (start - end) * (1 + cos(pi p)) / 2``, 'linear': ``start + (end - start) p``.
    Momentum runs the opposite way between ``max_momentum`` and ``base_momentum``.
    """

    _settings = ("total_steps", "_schedule_phases", "_anneal_func_type", "cycle_momentum", "use_beta1")
    _optional = frozenset({"use_beta1"})
    has_closed_form = True

    def __init__(self, optimizer: Any, max_lr: float | Sequence[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85, max_momentum: float | Sequence[float] = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        kind = "OneCycleLR"
        optimizer = checked_optimizer(optimizer, kind)
        if total_steps is not None:
            self.total_steps = positive_int(kind, "total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = positive_int(kind, "epochs", epochs) * positive_int(kind, "steps_per_epoch",
                                                                                   steps_per_epoch)
        else:
            raise ValueError(f"{kind}: give total_steps, or epochs and steps_per_epoch")
        if not 0 <= real(kind, "pct_start", pct_start) <= 1:
            raise ValueError(f"{kind}: pct_start must be in [0, 1], got {pct_start!r}")
        self._schedule_phases = _phases(float(pct_start), self.total_steps, three_phase)
        self._anneal_func_type = one_of(kind, "anneal_strategy", anneal_strategy, ("cos", "linear"))
        max_lrs = per_group(kind, "max_lr", max_lr, optimizer)
        for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if real(kind, name, value) == 0:
                raise ValueError(f"{kind}: {name} must not be 0")
        if last_epoch == -1:
            for high, group in zip(max_lrs, optimizer.param_groups):
                group["initial_lr"] = high / div_factor
                group["max_lr"] = high
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = _momentum_key(kind, optimizer, self.cycle_momentum)
        if self.cycle_momentum:
            highs = per_group(kind, "max_momentum", max_momentum, optimizer)
            lows = per_group(kind, "base_momentum", base_momentum, optimizer)
            if last_epoch == -1:
                _write_momentum(optimizer.param_groups, highs, self.use_beta1)
                for group, low, high in zip(optimizer.param_groups, lows, highs):
                    group["max_momentum"], group["base_momentum"] = high, low
        needed = ["max_lr", "min_lr", *(["max_momentum", "base_momentum"] if self.cycle_momentum else [])]
        for g, group in enumerate(optimizer.param_groups):
            missing = [key for key in needed if key not in group]
            if missing:
                raise KeyError(f"{kind}: param group {g} lacks {missing}, needed to resume with "
                               f"last_epoch={last_epoch}; load the optimizer's state dict first")
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase(self, epoch: float) -> tuple[dict[str, Any], float]:
        """The phase ``epoch`` is in and the fraction of it done."""
        start = 0.0
        for i, phase in enumerate(self._schedule_phases):
            end = phase["end_step"]
            if epoch <= end or i == len(self._schedule_phases) - 1:
                return phase, (epoch - start) / (end - start)
            start = end
        raise AssertionError("unreachable")  # pragma: no cover

    def schedule(self, group: int = 0) -> S.Schedule:
        g = self.optimizer.param_groups[group]
        return S.OneCycle(g["max_lr"], self.total_steps, anneal_strategy=self._anneal_func_type,
                          three_phase=len(self._schedule_phases) == 3,
                          ends=tuple(float(p["end_step"]) for p in self._schedule_phases),
                          lrs=(g["initial_lr"], g["max_lr"], g["min_lr"]))

    def closed_form(self, epoch: float) -> list[float]:
        """Every group's lr at ``epoch`` (from the group's initial_lr, max_lr and min_lr, set at construction)."""
        phase, pct = self._phase(epoch)
        return [self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                for group in self.optimizer.param_groups]

    def closed_form_momentum(self, epoch: float) -> list[float]:
        """Every group's momentum (or beta1) at ``epoch``."""
        phase, pct = self._phase(epoch)
        return [self._anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                for group in self.optimizer.param_groups]

    def _next_lrs(self) -> list[float]:
        if self.last_epoch > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {self.last_epoch} times, but total_steps is "
                             f"{self.total_steps}")
        if self.cycle_momentum:
            _write_momentum(self.optimizer.param_groups, self.closed_form_momentum(self.last_epoch), self.use_beta1)
        return self.closed_form(self.last_epoch)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        where = "OneCycleLR.load_state_dict"
        one_of(where, "_anneal_func_type", values["_anneal_func_type"], ("cos", "linear"))
        values["total_steps"] = positive_int(where, "total_steps", values["total_steps"])
        phases = values["_schedule_phases"]
        entries = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
        if not isinstance(phases, (list, tuple)) or not phases:
            raise ValueError(f"{where}: '_schedule_phases' must be a list of phases, got {phases!r}")
        for i, phase in enumerate(phases):
            keys = ("start_lr", "end_lr", "start_momentum", "end_momentum")
            if not isinstance(phase, dict) or set(phase) != {"end_step", *keys} \
                    or any(phase[k] not in entries for k in keys):
                raise ValueError(f"{where}: '_schedule_phases'[{i}] must have 'end_step' and {list(keys)} naming "
                                 f"group entries {list(entries)}, got {phase!r}")
            real(where, f"'_schedule_phases'[{i}]['end_step']", phase["end_step"])
        return values


def _phases(pct_start: float, total: int, three_phase: bool) -> list[dict[str, Any]]:
    """The phases as torch lists them: where each ends and which group entries it goes between."""
    def phase(end_step: float, start_lr: str, end_lr: str, start_momentum: str, end_momentum: str) -> dict[str, Any]:
        return {"end_step": end_step, "start_lr": start_lr, "end_lr": end_lr, "start_momentum": start_momentum,
                "end_momentum": end_momentum}

    if three_phase:
        return [phase(float(pct_start * total) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                phase(float(2 * pct_start * total) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                phase(total - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
    return [phase(float(pct_start * total) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
            phase(total - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter, 2017): ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi T_cur / T_i)) / 2``,
    ``T_cur`` the epochs since the last restart, ``T_i = T_0 * T_mult ** (restarts so far)``.

    ``step(epoch)`` takes fractional epochs (not deprecated, as in torch).
    """

    _settings = ("T_0", "T_i", "T_mult", "eta_min", "T_cur")
    has_closed_form = True

    def __init__(self, optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0,  # noqa: N803
                 last_epoch: int = -1) -> None:
        kind = "CosineAnnealingWarmRestarts"
        self.T_0 = self.T_i = positive_int(kind, "T_0", T_0)
        self.T_mult = positive_int(kind, "T_mult", T_mult)
        self.eta_min = real(kind, "eta_min", eta_min)
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def _next_lrs(self) -> list[float]:
        cosine = 1 + math.cos(math.pi * self.T_cur / self.T_i)
        return [self.eta_min + (base_lr - self.eta_min) * cosine / 2 for base_lr in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """One epoch on, or to ``epoch`` (a number >= 0, fractions allowed)."""
        with self.optimizer._lock:  # noqa: SLF001
            self._refuse_if_compiled()
            if epoch is None and self.last_epoch < 0:
                epoch = 0
            if epoch is None:
                epoch = self.last_epoch + 1
                self.T_cur += 1
                if self.T_cur >= self.T_i:
                    self.T_cur, self.T_i = self.T_cur % self.T_i, self.T_i * self.T_mult
            else:
                if real("CosineAnnealingWarmRestarts", "epoch", epoch) < 0:
                    raise ValueError(f"CosineAnnealingWarmRestarts: epoch must be >= 0, got {epoch!r}")
                self.T_cur, self.T_i = self._position(epoch)
            self.last_epoch = math.floor(epoch)
            with self._within_step():
                self._write("lr", self.get_lr())

    def _position(self, epoch: float) -> tuple[float, int]:
        """``(T_cur, T_i)`` at ``epoch``: restarts at ``T_0 * (T_mult ** n - 1) / (T_mult - 1)``."""
        if epoch < self.T_0:
            return epoch, self.T_0
        if self.T_mult == 1:
            return epoch % self.T_0, self.T_0
        n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
        while self._restart(n + 1) <= epoch:  # the logarithm can round across a restart
            n += 1
        while n > 0 and self._restart(n) > epoch:
            n -= 1
        return epoch - self._restart(n), self.T_0 * self.T_mult ** n

    def _restart(self, n: int) -> float:
        return self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.CosineWarmRestarts(self.T_0, self.T_mult, self.eta_min)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        where = "CosineAnnealingWarmRestarts.load_state_dict"
        values["T_0"] = positive_int(where, "T_0", values["T_0"])
        values["T_mult"] = positive_int(where, "T_mult", values["T_mult"])
        values["T_i"] = positive_int(where, "T_i", values["T_i"])
        real(where, "T_cur", values["T_cur"])
        return values

