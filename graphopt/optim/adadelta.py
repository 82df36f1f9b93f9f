"""Adadelta."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, ScaleByAdadelta, ScaleByLearningRate, Transform, chain


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012), torch.optim.Adadelta's formula.

    Per tensor, in the order applied (steps 1-4 as in `SGD`: ``scale``, ``clip_value``,
    ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. ``s <- rho * s + (1 - rho) * g * g``
    7. ``u <- sqrt(d + eps) / sqrt(s + eps) * g``
    8. ``d <- rho * d + (1 - rho) * u * u``
    9. ``p <- p - (lr * lr_mult) * u``

    State slots: ``square_avg`` (``s``), ``acc_delta`` (``d``) and ``step``.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: factor applied to the update (1.0 in the paper's method).
        rho: averaging coefficient of both running averages, in [0, 1].
        eps: added inside both square roots, >= 0.
        weight_decay: L2 penalty (coupled).
        foreach, capturable: accepted for torch compatibility (no effect).
        maximize, scale, clip_norm, clip_value, clip_per_tensor, differentiable: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False, scale: float = 1, clip_norm: float = 0,
                 clip_value: float = 0, clip_per_tensor: bool = False, **options: Any):
        validation.not_differentiable("Adadelta", differentiable)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, scale=scale,
                        clip_norm=clip_norm, clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.in_closed_unit_interval(where, "rho", group["rho"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(
            *gradient_transforms(group),
            AddWeightDecay() if group["weight_decay"] != 0 else None,
            ScaleByAdadelta(),
            ScaleByLearningRate(),
        )
