"""`LRScheduler`: torch.optim.lr_scheduler's protocol over a graphopt optimizer's ``param_groups``.

A scheduler only reads and writes entries of ``optimizer.param_groups`` (``lr``, and ``momentum``
or ``betas`` where it cycles momentum), which the optimizer reads as scalar graph inputs at every
step: changing them never recompiles. Any graphopt optimizer works, a `Trainer`'s included.

The protocol is torch's: constructing a scheduler sets ``group['initial_lr']`` (kept if present)
and takes one initial step (``last_epoch`` -1 -> 0); each ``step()`` advances ``last_epoch`` by
one and writes the new lr of every group; ``get_last_lr()`` is what the last step wrote. Several
schedulers on one optimizer each rescale the current lr, so their effects multiply, as in torch.
``step(epoch)`` is deprecated as in torch: it warns and jumps to ``epoch`` through the closed form
where torch has one.

Closed forms: a scheduler whose lr is a function of the epoch count alone (and of its
constructor arguments) says so with ``has_closed_form`` and gives it as ``schedule(group)``, a
`graphopt.optim.schedules.Schedule`; ``closed_form(epoch)`` evaluates it for every group, and
``multiplicative`` ones are ``base_lr * multiplier(epoch)``, so that a chain of them is the
product of their multipliers. `compile` puts the schedule into the optimizer's update graphs
(`Optimizer.schedule_lr`), so that exported models follow it. Schedulers without one
(`LambdaLR`'s callables, `MultiplicativeLR`, `ReduceLROnPlateau`, `SWALR`) raise `NoClosedForm`,
and an optimizer's ``export`` warns that the exported model takes their lr as an input.

``state_dict()`` holds plain values only (numbers, strings, bools, None, lists and dicts of
them, no callables), with torch's keys plus ``'class'``; `graphopt.checkpoint` saves it without
pickle. ``load_state_dict`` checks everything before changing anything, refuses another
scheduler's state, and also reads torch's own scheduler state dicts.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from graphopt.optim.schedules import Schedule

EPOCH_DEPRECATION_WARNING = (
    "The epoch argument of scheduler.step(epoch) is deprecated, as in torch: call scheduler.step() "
    "once per step. While it is accepted, a given epoch sets last_epoch and uses the scheduler's closed "
    "form where it has one, instead of the chainable form.")

PER_GROUP_KEYS = frozenset({"base_lrs", "_last_lr", "max_lrs", "min_lrs", "base_momentums", "max_momentums"})
"""State entries holding one number per param group."""

TORCH_ONLY_KEYS = frozenset({"_is_initial", "_get_lr_called_within_step", "verbose", "_scale_fn_ref"})
"""Keys torch's state dicts hold that carry nothing to restore (flags that are False between calls)."""


class NoClosedForm(NotImplementedError):
    """The scheduler's lr is not a function of the epoch count alone."""


class LRScheduler:
    """Base class of the schedulers; subclasses compute the next lrs in `_next_lrs`.

    Args:
        optimizer: a graphopt optimizer (``Trainer.optimizer`` too).
        last_epoch: index of the last epoch seen; -1 (default) starts the schedule. Other values
            resume it and need ``initial_lr`` in every param group (a loaded optimizer state has it).
    """

    _settings: tuple[str, ...] = ()
    """Constructor settings saved in the state dict, under torch's attribute names."""
    _state: tuple[str, ...] = ("base_lrs", "last_epoch", "_step_count", "_last_lr")
    _optional: frozenset[str] = frozenset()
    """Keys a state dict may lack (torch leaves them out in some configurations)."""
    _closed_form_on_epoch = False
    """``step(epoch)`` uses `closed_form` (torch's schedulers with ``_get_closed_form_lr``)."""
    has_closed_form = False
    multiplicative = False

    _compiled = False

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        self.optimizer = checked_optimizer(optimizer, type(self).__name__)
        self.optimizer._python_schedulers.add(self)  # noqa: SLF001 - so that export can say it stays in Python
        self.last_epoch = checked_last_epoch(type(self).__name__, last_epoch)
        groups = self.optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for g, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: param group {g} has no 'initial_lr', needed to resume "
                                   f"with last_epoch={last_epoch}; load the optimizer's state dict (saved while a "
                                   "scheduler ran) first, or start with last_epoch=-1")
        self.base_lrs = [group["initial_lr"] for group in groups]
        self._initial_step()

    # -- stepping ----------------------------------------------------------------------------

    def _initial_step(self) -> None:
        """What constructing does: step counts to 0, then one step in initial mode."""
        self._step_count = 0
        with self._initial_mode():
            self.step()

    @contextlib.contextmanager
    def _initial_mode(self) -> Iterator[None]:
        self._is_initial = True
        try:
            yield
        finally:
            self._is_initial = False

    @contextlib.contextmanager
    def _within_step(self) -> Iterator[None]:
        self._get_lr_called_within_step = True
        try:
            yield
        finally:
            self._get_lr_called_within_step = False

    _is_initial = False
    _get_lr_called_within_step = False

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (or, deprecated, jump to ``epoch``) and write every group's lr."""
        with self.optimizer._lock:  # noqa: SLF001 - the optimizer's own lock: no step sees half the groups
            self._refuse_if_compiled()
            if epoch is not None:
                warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
            before = self.last_epoch, self._step_count
            self._step_count += 1
            try:
                self._update_lr(epoch)
            except Exception:
                self.last_epoch, self._step_count = before  # a refused step changes nothing
                raise

    def _update_lr(self, epoch: int | None = None) -> None:
        with self._within_step():
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                values = self.closed_form(epoch) if self._closed_form_on_epoch else self.get_lr()
        self._write("lr", values)

    def _write(self, key: str, values: Sequence[float]) -> None:
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise RuntimeError(f"{type(self).__name__}: the optimizer has {len(groups)} param groups, the scheduler "
                               f"computed {len(values)} lrs; were groups added after the scheduler was made?")
        for group, value in zip(groups, values):
            group[key] = value
        self._last_lr = [group["lr"] for group in groups]

    def get_lr(self) -> list[float]:
        """The lrs of the step being taken (use `get_last_lr` to read the current ones)."""
        if not self._get_lr_called_within_step:
            warnings.warn("To get the last learning rate computed by the scheduler, please use `get_last_lr()`.",
                          UserWarning, stacklevel=2)
        return self._next_lrs()

    def _next_lrs(self) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The lr of every group as the last step wrote it (compiled: as the optimizer's last step left it)."""
        if self._compiled:
            return [group["lr"] for group in self.optimizer.param_groups]
        return list(self._last_lr)

    def _current(self, key: str = "lr") -> list[Any]:
        return [group[key] for group in self.optimizer.param_groups]

    # -- closed form ---------------------------------------------------------------------------

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s lr as a closed-form schedule of the epoch count: at epoch ``e`` it is
        ``schedule(group).value(e, base_lrs[group])``."""
        raise NoClosedForm(f"{type(self).__name__} has no closed form: its lr depends on more than the epoch count")

    def multiplier(self, epoch: float) -> float:
        """``lr / base_lr`` at ``epoch``, for the ``multiplicative`` schedulers."""
        schedule = self.schedule(0)
        if not schedule.multiplicative:
            raise NoClosedForm(f"{type(self).__name__} is not a multiple of the base lr alone")
        return float(schedule.factor(np.float64(epoch)))

    def closed_form(self, epoch: float) -> list[float]:
        """Every group's lr at ``epoch`` as a function of the epoch count and the constructor arguments."""
        schedules = [self.schedule(g) for g in range(len(self.optimizer.param_groups))]
        return [schedule.value(epoch, base_lr) for schedule, base_lr in zip(schedules, self.base_lrs)]

    def compile(self) -> None:
        """Compute this schedule inside the optimizer's update graphs from now on, so that exported
        update and training-step models follow it (`Optimizer.schedule_lr`, one schedule per group).

        The graph's clock counts **optimizer steps** from ``last_epoch``: compile a scheduler that
        is stepped once per optimizer step (per batch). After this, `step` raises (each optimizer
        step advances the schedule) and `get_last_lr` reads the groups' lr. Raises `NoClosedForm`,
        changing nothing, for a scheduler without a closed form or one that cycles momentum."""
        with self.optimizer._lock:  # noqa: SLF001
            self._refuse_if_compiled()
            if getattr(self, "cycle_momentum", False):
                raise NoClosedForm(f"{type(self).__name__}.compile: momentum cycling stays in Python; make the "
                                   "scheduler with cycle_momentum=False to compile its lr")
            schedules = [self.schedule(g) for g in range(len(self.optimizer.param_groups))]
            for g, (schedule, base_lr) in enumerate(zip(schedules, self.base_lrs)):
                self.optimizer.schedule_lr(schedule, g, clock=self._epochs(), initial_lr=base_lr)
            self._compiled = True

    def _epochs(self) -> int:
        """The epochs stepped so far (where a compiled schedule's clock starts)."""
        return self.last_epoch

    def _refuse_if_compiled(self) -> None:
        if self._compiled:
            raise RuntimeError(f"{type(self).__name__} is compiled into the update graphs: every optimizer step "
                               "advances it; remove the scheduler.step() calls")

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Settings and progress as plain values, with torch's keys and ``'class'`` (this class's name)."""
        state = {key: self._saved(key) for key in (*self._settings, *self._state)}
        state["class"] = type(self).__name__
        return state

    def _saved(self, key: str) -> Any:
        return copy.deepcopy(getattr(self, key))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict` (ours or torch's); raises, changing nothing, if it does not fit."""
        with self.optimizer._lock:  # noqa: SLF001
            self._apply(self._checked(state_dict))

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        """The values to restore, every one checked."""
        kind = type(self).__name__
        where = f"{kind}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(state_dict).__name__}")
        saved_class = state_dict.get("class", kind)
        if saved_class != kind:
            raise ValueError(f"{where}: the state dict is from {saved_class}, this scheduler is {kind}")
        expected = (*self._settings, *self._state)
        missing = [key for key in expected if key not in state_dict and key not in self._optional]
        unexpected = sorted(map(str, set(state_dict) - set(expected) - TORCH_ONLY_KEYS - {"class"}))
        if missing or unexpected:
            raise ValueError(f"{where}: missing {missing}, unexpected {unexpected}; is it another scheduler's state?")
        values = {key: copy.deepcopy(state_dict[key]) for key in expected if key in state_dict}
        groups = len(self.optimizer.param_groups)
        for key in set(values) & PER_GROUP_KEYS:
            values[key] = number_list(f"{where}: {key!r}", values[key], groups)
        for key in ("last_epoch", "_step_count"):
            if key in values:
                values[key] = whole_number(f"{where}: {key!r}", values[key])
        return values

    def _apply(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={getattr(self, 'last_epoch', None)}, lrs={self._last_lr})"


# -- checks ---------------------------------------------------------------------------------------


def checked_optimizer(optimizer: Any, kind: str) -> Any:
    """``optimizer`` if it is a graphopt optimizer whose param groups all have an ``lr``."""
    from graphopt.optim.optimizer import Optimizer  # the facade; schedulers only touch its param_groups

    if not isinstance(optimizer, Optimizer):
        hint = "; pass trainer.optimizer" if hasattr(optimizer, "optimizer") else ""
        raise TypeError(f"{kind}: {type(optimizer).__name__} is not a graphopt optimizer{hint}")
    if not optimizer.param_groups:
        raise ValueError(f"{kind}: the optimizer has no param groups yet (a Trainer adds them when it is made)")
    for g, group in enumerate(optimizer.param_groups):
        if "lr" not in group:
            raise KeyError(f"{kind}: param group {g} has no 'lr'")
    return optimizer


def checked_last_epoch(kind: str, last_epoch: Any) -> int:
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral) or last_epoch < -1:
        raise ValueError(f"{kind}: last_epoch must be an integer >= -1, got {last_epoch!r}")
    return int(last_epoch)


def real(kind: str, name: str, value: Any) -> float:
    """``value`` if it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{kind}: {name} must be a finite real number, got {value!r}")
    return value


def positive_int(kind: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{kind}: {name} must be a positive integer, got {value!r}")
    return int(value)


def nonnegative_int(kind: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{kind}: {name} must be an integer >= 0, got {value!r}")
    return int(value)


def one_of(kind: str, name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{kind}: {name} must be one of {list(allowed)}, got {value!r}")
    return value


def per_group(kind: str, name: str, value: Any, optimizer: Any) -> list[float]:
    """``value`` for every param group: a list with one number per group, or one number for all."""
    groups = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != groups:
            raise ValueError(f"{kind}: {name} must have one value per param group ({groups}), got {len(value)}")
        return [real(kind, f"{name}[{g}]", v) for g, v in enumerate(value)]
    return [real(kind, name, value)] * groups


def number_list(where: str, value: Any, length: int) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"{where} must be a list of {length} numbers (one per param group), got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{where} must hold numbers, got {v!r}")
    return list(value)


def whole_number(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value):
        raise ValueError(f"{where} must be a whole number, got {value!r}")
    return int(value)
