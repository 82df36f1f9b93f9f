"""ASGD: averaged stochastic gradient descent."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, AveragedSgd, Transform, chain


class ASGD(Optimizer):
    r"""Averaged SGD (Polyak & Juditsky, 1992), torch.optim.ASGD's formula.

    Per tensor, with ``t`` its step count and ``lr`` meaning ``lr * lr_mult``, in the order applied
    (steps 1-4 as in `SGD`: ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. ``eta`` is the state's, or ``lr`` on the tensor's first step
    7. ``p <- p * (1 - lambd * eta) - eta * g``
    8. ``ax <- p`` if ``mu == 1``, else ``ax <- ax + (p - ax) * mu``  (``mu`` is 1 before the first step)
    9. ``eta <- lr / (1 + lambd * lr * t) ** alpha``, ``mu <- 1 / max(1, t - t0)``: used at the next step

    State: ``ax`` (the averaged parameters), ``eta`` and ``mu`` (floats per tensor; torch keeps
    0-d tensors), and ``step``. As in torch, ``eta`` and ``mu`` are computed with one step's
    ``lr`` and used at the next, so they are state, not functions of ``t``.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate, >= 0.
        lambd: decay term.
        alpha: power of the ``eta`` schedule.
        t0: the step from which the average starts moving.
        weight_decay: L2 penalty (coupled), >= 0.
        foreach, capturable: accepted for torch compatibility (no effect).
        differentiable: not supported (raises NotImplementedError if True).
        maximize, scale, clip_norm, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False, *,
                 scale: float = 1, clip_norm: float = 0, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        validation.not_differentiable("ASGD", differentiable)
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize,
                        scale=scale, clip_norm=clip_norm, clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        for key in ("lambd", "alpha", "t0"):
            validation.as_float(where, key, group[key])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), AddWeightDecay() if group["weight_decay"] != 0 else None,
                     AveragedSgd())
