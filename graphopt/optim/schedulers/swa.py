"""`SWALR` (torch.optim.swa_utils): anneal each group's lr to a constant ``swa_lr``."""

from __future__ import annotations

import math
from typing import Any, Sequence

from graphopt.optim.schedulers.base import (
    LRScheduler,
    NoClosedForm,
    checked_optimizer,
    nonnegative_int,
    one_of,
    per_group,
)


class SWALR(LRScheduler):
    """Over ``anneal_epochs`` steps, ``lr = swa_lr * a(t) + lr_0 * (1 - a(t))`` with ``t = min(1, s / anneal_epochs)``
    (``s`` the steps since construction), ``a(t) = (1 - cos(pi t)) / 2`` ('cos') or ``t`` ('linear'); then
    ``lr = swa_lr``. ``lr_0`` is the lr the group had when SWALR took over, recovered at each step from the
    current lr as torch does. No closed form: it depends on that lr, which another scheduler may have set.
    """

    _settings = ("_anneal_strategy", "anneal_epochs")

    def __init__(self, optimizer: Any, swa_lr: float | Sequence[float], anneal_epochs: int = 10,
                 anneal_strategy: str = "cos", last_epoch: int = -1) -> None:
        kind = "SWALR"
        optimizer = checked_optimizer(optimizer, kind)
        swa_lrs = per_group(kind, "swa_lr", swa_lr, optimizer)
        self._anneal_strategy = one_of(kind, "anneal_strategy", anneal_strategy, ("cos", "linear"))
        self.anneal_epochs = nonnegative_int(kind, "anneal_epochs", anneal_epochs)
        for value, group in zip(swa_lrs, optimizer.param_groups):
            group["swa_lr"] = value
        super().__init__(optimizer, last_epoch)

    def anneal(self, t: float) -> float:
        return (1 - math.cos(math.pi * t)) / 2 if self._anneal_strategy == "cos" else t

    def _next_lrs(self) -> list[float]:
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        span = max(1, self.anneal_epochs)
        before = self.anneal(max(0, min(1, (step - 1) / span)))
        now = self.anneal(max(0, min(1, step / span)))
        lrs = []
        for group in self.optimizer.param_groups:
            swa_lr = group["swa_lr"]
            start = swa_lr if before == 1 else (group["lr"] - before * swa_lr) / (1 - before)
            lrs.append(swa_lr * now + start * (1 - now))
        return lrs

    def schedule(self, group: int = 0):
        raise NoClosedForm("SWALR has no closed form: it anneals from whatever lr the group had when it took over")

    def _checked(self, state_dict: Any) -> dict[str, Any]:
        values = super()._checked(state_dict)
        one_of("SWALR.load_state_dict", "_anneal_strategy", values["_anneal_strategy"], ("cos", "linear"))
        nonnegative_int("SWALR.load_state_dict", "anneal_epochs", values["anneal_epochs"])
        return values
