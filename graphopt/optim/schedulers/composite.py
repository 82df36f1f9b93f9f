"""Schedulers made of schedulers: `ChainedScheduler` (all at once) and `SequentialLR` (one after another)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Sequence

from graphopt.optim import schedules as S
from graphopt.optim.schedulers.base import LRScheduler, NoClosedForm, checked_optimizer, nonnegative_int


def _members(kind: str, schedulers: Any, optimizer: Any) -> list[LRScheduler]:
    """The member schedulers, checked: graphopt schedulers of ``optimizer``, none a ReduceLROnPlateau."""
    from graphopt.optim.schedulers.plateau import ReduceLROnPlateau

    schedulers = list(schedulers)
    if not schedulers:
        raise ValueError(f"{kind}: expected at least one scheduler, got none")
    for i, scheduler in enumerate(schedulers):
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"{kind}: schedulers[{i}] is a {type(scheduler).__name__}, not a graphopt scheduler")
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(f"{kind}: schedulers[{i}] is a ReduceLROnPlateau, whose step needs a metric; "
                             "step it separately")
        if scheduler.optimizer is not optimizer:
            raise ValueError(f"{kind}: schedulers[{i}] ({type(scheduler).__name__}) belongs to another optimizer; "
                             "all schedulers must share one")
    return schedulers


class _Composite(LRScheduler):
    """Saves and loads its members' state dicts under ``_schedulers``."""

    _schedulers: list[LRScheduler]

    def compile(self) -> None:
        """As `LRScheduler.compile`; the members count as compiled too (their steps are the graph's)."""
        super().compile()
        for scheduler in self._schedulers:
            scheduler._compiled = True  # noqa: SLF001

    def _epochs(self) -> int:
        return self.last_epoch if hasattr(self, "last_epoch") else self._schedulers[0].last_epoch

    def _register(self) -> None:
        self.optimizer._python_schedulers.add(self)  # noqa: SLF001 - so that export can say it stays in Python

    @property
    def base_lrs(self) -> list[float]:  # type: ignore[override]
        return self._schedulers[0].base_lrs

    def _saved(self, key: str) -> Any:
        if key == "_schedulers":
            return [s.state_dict() for s in self._schedulers]
        return super()._saved(key)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        saved = values["_schedulers"]
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self._schedulers):
            raise ValueError(f"{type(self).__name__}.load_state_dict: '_schedulers' must hold "
                             f"{len(self._schedulers)} state dicts, got {type(saved).__name__}"
                             f"{'' if not isinstance(saved, (list, tuple)) else f' of {len(saved)}'}")
        values["_schedulers"] = [s._checked(d) for s, d in zip(self._schedulers, saved)]  # noqa: SLF001
        return values

    def _apply(self, values: dict[str, Any]) -> None:
        members = values.pop("_schedulers")
        super()._apply(values)
        for scheduler, loaded in zip(self._schedulers, members):
            scheduler._apply(loaded)  # noqa: SLF001


class ChainedScheduler(_Composite):
    """Steps every member at each ``step()``: their rescalings of the lr multiply.

    Closed form when every member is multiplicative: ``lr = base_lr * prod_i multiplier_i(e)``.
    """

    _state = ("_last_lr", "_schedulers")

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer: Any = None) -> None:
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("ChainedScheduler: expected at least one scheduler, got none")
        if optimizer is None:
            optimizer = getattr(schedulers[0], "optimizer", None)
        self.optimizer = checked_optimizer(optimizer, "ChainedScheduler")
        self._schedulers = _members("ChainedScheduler", schedulers, self.optimizer)
        self._register()
        self._last_lr = self._current()

    def step(self) -> None:  # type: ignore[override]
        """Step every member, in order."""
        with self.optimizer._lock:  # noqa: SLF001
            self._refuse_if_compiled()
            for scheduler in self._schedulers:
                scheduler.step()
            self._last_lr = self._current()

    @property
    def multiplicative(self) -> bool:  # type: ignore[override]
        return all(s.multiplicative for s in self._schedulers)

    has_closed_form = multiplicative

    def schedule(self, group: int = 0) -> S.Schedule:
        if not self.multiplicative:
            raise NoClosedForm(f"ChainedScheduler: members {self._not_multiplicative()} are not multiples of the "
                               "base lr, so the chain has no closed form")
        return S.Chained([s.schedule(group) for s in self._schedulers])

    def _not_multiplicative(self) -> list[str]:
        return [type(s).__name__ for s in self._schedulers if not s.multiplicative]

    def __repr__(self) -> str:
        return f"ChainedScheduler({[type(s).__name__ for s in self._schedulers]}, lrs={self._last_lr})"


class SequentialLR(_Composite):
    """``schedulers[i]`` drives the lr from ``milestones[i-1]`` on, restarted there at its epoch 0
    (through its closed form where it has one, as torch does).

    Closed form: ``lr(e) = schedulers[i].closed_form(e - milestones[i-1])`` with
    ``i = number of milestones <= e`` (``milestones[-1]`` read as 0).
    """

    _state = ("_milestones", "last_epoch", "_last_lr", "_schedulers")

    def __init__(self, optimizer: Any, schedulers: Sequence[LRScheduler], milestones: Sequence[int],
                 last_epoch: int = -1) -> None:
        kind = "SequentialLR"
        self.optimizer = checked_optimizer(optimizer, kind)
        self._schedulers = _members(kind, schedulers, self.optimizer)
        self._register()
        for i, scheduler in enumerate(self._schedulers):
            if isinstance(scheduler, _Composite):
                raise ValueError(f"{kind}: schedulers[{i}] is a {type(scheduler).__name__}; composite schedulers "
                                 "cannot be restarted at a milestone (torch fails there too)")
        milestones = [nonnegative_int(kind, "every milestone", m) for m in milestones]
        if len(milestones) != len(self._schedulers) - 1:
            raise ValueError(f"{kind}: expected {len(self._schedulers) - 1} milestones (one fewer than the "
                             f"{len(self._schedulers)} schedulers), got {len(milestones)}")
        if milestones != sorted(milestones):
            raise ValueError(f"{kind}: milestones must be increasing, got {milestones}")
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        for g, group in enumerate(self.optimizer.param_groups):
            if "initial_lr" not in group:
                raise KeyError(f"{kind}: param group {g} has no 'initial_lr'")
            group["lr"] = group["initial_lr"]
        for scheduler in self._schedulers:  # undo the steps the members took when they were made
            scheduler.last_epoch -= 1
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()  # noqa: SLF001
        self._last_lr = first.get_last_lr()

    def step(self) -> None:  # type: ignore[override]
        """Step the scheduler of the current segment; restart the next one at its milestone."""
        with self.optimizer._lock:  # noqa: SLF001
            self._refuse_if_compiled()
            self.last_epoch += 1
            i = bisect_right(self._milestones, self.last_epoch)
            scheduler = self._schedulers[i]
            if i > 0 and self._milestones[i - 1] == self.last_epoch:
                scheduler._update_lr(0)  # noqa: SLF001
            else:
                scheduler.step()
            self._last_lr = scheduler.get_last_lr()

    @property
    def has_closed_form(self) -> bool:  # type: ignore[override]
        return all(s.has_closed_form for s in self._schedulers)

    def schedule(self, group: int = 0) -> S.Schedule:
        return S.Sequential([s.schedule(group) for s in self._schedulers], self._milestones)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        values["_milestones"] = [nonnegative_int("SequentialLR.load_state_dict", "every milestone", m)
                                 for m in values["_milestones"]]
        if len(values["_milestones"]) != len(self._milestones):
            raise ValueError(f"SequentialLR.load_state_dict: expected {len(self._milestones)} milestones, "
                             f"got {values['_milestones']}")
        return values

    def __repr__(self) -> str:
        return (f"SequentialLR({[type(s).__name__ for s in self._schedulers]}, milestones={self._milestones}, "
                f"last_epoch={self.last_epoch}, lrs={self._last_lr})")
