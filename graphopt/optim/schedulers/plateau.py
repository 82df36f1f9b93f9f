"""`ReduceLROnPlateau`: divide the lr when a metric stops improving."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence, SupportsFloat

from graphopt.optim.schedulers.base import (
    EPOCH_DEPRECATION_WARNING,
    LRScheduler,
    checked_optimizer,
    nonnegative_int,
    one_of,
    per_group,
    real,
)


class ReduceLROnPlateau(LRScheduler):
    """After more than ``patience`` epochs without improvement, ``lr = max(lr * factor, min_lr)``
    per group (skipped when the change would be at most ``eps``), then ``cooldown`` epochs in
    which bad epochs are not counted.

    Improvement of ``metric`` over ``best``: mode 'min', threshold_mode 'rel':
    ``metric < best * (1 - threshold)``; 'min', 'abs': ``metric < best - threshold``; 'max', 'rel':
    ``metric > best * (1 + threshold)``; 'max', 'abs': ``metric > best + threshold``.
    No closed form: the lr depends on the metrics.
    """

    _settings = ("factor", "default_min_lr", "min_lrs", "patience", "cooldown", "eps", "mode", "threshold",
                 "threshold_mode")
    _state = ("last_epoch", "_last_lr", "mode_worse", "best", "cooldown_counter", "num_bad_epochs")

    def __init__(self, optimizer: Any, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | Sequence[float] = 0, eps: float = 1e-8) -> None:
        kind = "ReduceLROnPlateau"
        if not real(kind, "factor", factor) < 1.0:
            raise ValueError(f"{kind}: factor must be < 1.0, got {factor!r}")
        self.factor = factor
        self.optimizer = checked_optimizer(optimizer, kind)
        self.optimizer._python_schedulers.add(self)  # noqa: SLF001 - so that export can say it stays in Python
        self.min_lrs = per_group(kind, "min_lr", min_lr, self.optimizer)
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else min_lr
        self.patience = nonnegative_int(kind, "patience", patience)
        self.cooldown = nonnegative_int(kind, "cooldown", cooldown)
        self.eps = real(kind, "eps", eps)
        self.mode = one_of(kind, "mode", mode, ("min", "max"))
        self.threshold = real(kind, "threshold", threshold)
        self.threshold_mode = one_of(kind, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = self._current()
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record ``metrics`` for one more epoch (``epoch``, deprecated, sets the count) and maybe reduce."""
        current = float(metrics)
        with self.optimizer._lock:  # noqa: SLF001
            if epoch is None:
                epoch = self.last_epoch + 1
            else:
                warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
            self.last_epoch = epoch
            if self._is_better(current, self.best):
                self.best, self.num_bad_epochs = current, 0
            else:
                self.num_bad_epochs += 1
            if self.in_cooldown:
                self.cooldown_counter -= 1
                self.num_bad_epochs = 0
            if self.num_bad_epochs > self.patience:
                self._reduce_lr()
                self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
            self._last_lr = self._current()

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer has {len(groups)} param groups, min_lr was "
                                   f"given for {len(self.min_lrs)}; set min_lrs to one value per group")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                group["lr"] = new

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, metric: float, best: float) -> bool:
        if self.mode == "min":
            return metric < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return metric > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def _next_lrs(self) -> list[float]:
        return self._current()

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        where = "ReduceLROnPlateau.load_state_dict"
        one_of(where, "mode", values["mode"], ("min", "max"))
        one_of(where, "threshold_mode", values["threshold_mode"], ("rel", "abs"))
        values["min_lrs"] = [real(where, "min_lrs", v) for v in values["min_lrs"]]
        values["mode_worse"] = math.inf if values["mode"] == "min" else -math.inf
        return values
