"""Adagrad, with learning-rate decay and an initial accumulator value."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, ScaleByAdagrad, ScaleByLearningRate, Transform, chain


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011), torch.optim.Adagrad's formula.

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. ``s <- initial_accumulator_value`` when ``t = 1``, then ``s <- s + g * g``
    7. ``p <- p - (lr * lr_mult) / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)``

    State slots: ``sum`` and ``step``. torch creates every parameter's state when the
    optimizer is built; graphopt when the parameter takes its first step, with the same
    values (a parameter that never took a step has no state entry).

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        lr_decay: the learning rate is divided by ``1 + (t - 1) * lr_decay``.
        weight_decay: L2 penalty (coupled).
        initial_accumulator_value: the value ``sum`` starts from, >= 0 (per group in graphopt;
            torch reads its constructor's value for groups added later).
        eps: added to the denominator, >= 0.
        foreach, fused: accepted for torch compatibility; a group's tensors are always updated together.
        maximize, scale, clip_norm, clip_value, clip_per_tensor, differentiable: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0, eps: float = 1e-10,
                 foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
                 fused: bool | None = None, scale: float = 1, clip_norm: float = 0, clip_value: float = 0,
                 clip_per_tensor: bool = False, **options: Any):
        validation.not_differentiable("Adagrad", differentiable)
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize,
                        scale=scale, clip_norm=clip_norm, clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            validation.nonnegative(where, key, group[key])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(
            *gradient_transforms(group),
            AddWeightDecay() if group["weight_decay"] != 0 else None,
            ScaleByAdagrad(initial=group["initial_accumulator_value"] != 0),
            ScaleByLearningRate(),
        )
