"""Schedulers driven by user functions of the epoch: `LambdaLR` and `MultiplicativeLR`.

Neither has a closed form that could be compiled: the functions are arbitrary Python. Their
state dicts save, per function, None for a plain function or lambda and the ``__dict__`` of a
callable object (torch's rule): never the callable itself.
"""

from __future__ import annotations

import copy
import types
from typing import Any, Callable, Sequence

from graphopt.optim.schedulers.base import LRScheduler, checked_optimizer

LrLambda = Callable[[int], float]


class _LambdaScheduler(LRScheduler):
    def __init__(self, optimizer: Any, lr_lambda: LrLambda | Sequence[LrLambda], last_epoch: int = -1) -> None:
        kind = type(self).__name__
        groups = len(checked_optimizer(optimizer, kind).param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != groups:
                raise ValueError(f"{kind}: expected {groups} lr_lambdas (one per param group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * groups
        for g, fn in enumerate(self.lr_lambdas):
            if not callable(fn):
                raise TypeError(f"{kind}: lr_lambda for param group {g} must be callable, got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    _state = (*LRScheduler._state, "lr_lambdas")

    def _saved(self, key: str) -> Any:
        if key == "lr_lambdas":
            return [None if isinstance(fn, types.FunctionType) else copy.deepcopy(fn.__dict__)
                    for fn in self.lr_lambdas]
        return super()._saved(key)

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        saved = values["lr_lambdas"]
        where = f"{type(self).__name__}.load_state_dict: 'lr_lambdas'"
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas):
            raise ValueError(f"{where} must be a list of {len(self.lr_lambdas)} entries, got {saved!r}")
        for g, entry in enumerate(saved):
            if entry is not None and not isinstance(entry, dict):
                raise ValueError(f"{where}[{g}] must be None or the dict of a callable object, got {entry!r}")
            if entry is not None and isinstance(self.lr_lambdas[g], types.FunctionType):
                raise ValueError(f"{where}[{g}] holds a callable object's attributes, but this scheduler's "
                                 "lr_lambda is a plain function")
        return values

    def _apply(self, values: dict[str, Any]) -> None:
        saved = values.pop("lr_lambdas")
        super()._apply(values)
        for fn, entry in zip(self.lr_lambdas, saved):
            if entry is not None:
                fn.__dict__.update(entry)


class LambdaLR(_LambdaScheduler):
    """``lr = base_lr * lr_lambda(e)``, one function per group or one for all. No closed form
    (an arbitrary callable)."""

    def _next_lrs(self) -> list[float]:
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaScheduler):
    """``lr_e = lr_(e-1) * lr_lambda(e)`` for ``e >= 1`` (the first step leaves the lr). No closed form."""

    def _next_lrs(self) -> list[float]:
        if self._is_initial:
            return self._current()
        return [lr * fn(self.last_epoch) for fn, lr in zip(self.lr_lambdas, self._current())]
