"""Signum, sign descent on momentum; signSGD without momentum (not in torch.optim)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import (Optimizer, gradient_transforms, validate_gradient_settings,
                                      weight_decay_transform)
from graphopt.transforms import ScaleByLearningRate, ScaleBySignum, Transform, chain


class Signum(Optimizer):
    r"""Signum (Bernstein et al., 2018, "signSGD: Compressed Optimisation for Non-Convex Problems").

    Per tensor, in the order applied (steps 1-4 as in `SGD`: ``scale``, ``clip_value``,
    ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``, or with ``decoupled_weight_decay``
       ``p <- p * (1 - (lr * lr_mult) * (weight_decay * decay_mult))``
    6. if ``momentum``: ``m <- momentum * m + (1 - momentum) * g`` and ``u <- sign(m)``;
       else (signSGD) ``u <- sign(g)``
    7. ``p <- p - (lr * lr_mult) * u``

    State slots: ``momentum_buffer`` (``m``, with momentum) and ``step``. The weight decay
    options are those of the authors' implementation (MXNet's ``Signum``: ``wd``, added to the
    gradient, and ``wd_lh``, decoupled), chosen here by a flag as in `RAdam`.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        momentum: averaging coefficient of the momentum, in [0, 1); 0 gives signSGD.
        weight_decay: weight decay, coupled (L2) unless ``decoupled_weight_decay``.
        decoupled_weight_decay: shrink the parameter as AdamW does.
        maximize, scale, clip_norm, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-2, momentum: float = 0.9,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 scale: float = 1, clip_norm: float = 0, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, scale=scale,
                        clip_norm=clip_norm, clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.in_unit_interval(where, "momentum", group["momentum"])
        validation.boolean(where, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        decay = weight_decay_transform(group, group["decoupled_weight_decay"])
        return chain(*gradient_transforms(group), decay, ScaleBySignum(momentum=group["momentum"] != 0),
                     ScaleByLearningRate())
