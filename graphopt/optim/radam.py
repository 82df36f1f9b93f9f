"""RAdam, Adam with a rectified adaptive learning rate."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import (Optimizer, gradient_transforms, validate_gradient_settings,
                                      weight_decay_transform)
from graphopt.transforms import ScaleByLearningRate, ScaleByRAdam, Transform, chain


class RAdam(Optimizer):
    r"""RAdam (Liu et al., 2020), torch.optim.RAdam's formula.

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``, or with ``decoupled_weight_decay``
       ``p <- p * (1 - (lr * lr_mult) * (weight_decay * decay_mult))``
    6. ``m <- beta1 * m + (1 - beta1) * g``
    7. ``v <- beta2 * v + (1 - beta2) * g * g``
    8. ``rho_inf = 2 / (1 - beta2) - 1``, ``rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)``
    9. if ``rho_t > 5``: ``r = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))``,
       ``p <- p - (lr * lr_mult) * m / (1 - beta1 ** t) * r * sqrt(1 - beta2 ** t) / (sqrt(v) + eps)``;
       else ``p <- p - (lr * lr_mult) * m / (1 - beta1 ** t)``

    State slots: ``exp_avg`` (``m``), ``exp_avg_sq`` (``v``) and ``step``.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        betas: averaging coefficients of the first and second moments, each in [0, 1).
        eps: added to the denominator, >= 0.
        weight_decay: weight decay, coupled (L2) unless ``decoupled_weight_decay``.
        decoupled_weight_decay: shrink the parameter as AdamW does.
        foreach, capturable: accepted for torch compatibility (no effect).
        maximize, scale, clip_norm, clip_value, clip_per_tensor, differentiable: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, scale: float = 1, clip_norm: float = 0,
                 clip_value: float = 0, clip_per_tensor: bool = False, **options: Any):
        validation.not_differentiable("RAdam", differentiable)
        defaults = dict(lr=lr, betas=validation.as_tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, scale=scale,
                        clip_norm=clip_norm, clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.betas(where, group["betas"])
        validation.boolean(where, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        decay = weight_decay_transform(group, group["decoupled_weight_decay"])
        return chain(*gradient_transforms(group), decay, ScaleByRAdam(), ScaleByLearningRate())
