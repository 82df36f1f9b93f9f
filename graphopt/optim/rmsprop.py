"""RMSprop, centered or not, with optional momentum."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, ScaleByLearningRate, ScaleByRms, Transform, chain


class RMSprop(Optimizer):
    r"""RMSprop (Hinton et al., 2012), torch.optim.RMSprop's formula.

    Per tensor, in the order applied (steps 1-4 as in `SGD`: ``scale``, ``clip_value``,
    ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. ``s <- alpha * s + (1 - alpha) * g * g``
    7. if ``centered``: ``a <- alpha * a + (1 - alpha) * g`` and ``d <- sqrt(s - a * a) + eps``;
       else ``d <- sqrt(s) + eps``
    8. if ``momentum``: ``b <- momentum * b + g / d`` and ``p <- p - (lr * lr_mult) * b``;
       else ``p <- p - (lr * lr_mult) * g / d``

    State slots: ``square_avg``, ``grad_avg`` (centered), ``momentum_buffer`` (momentum).
    As in torch, ``lr`` is applied outside the momentum buffer (Dragon's formula puts
    it inside); they differ only when ``lr`` changes during training.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        alpha: smoothing constant of the squared-gradient average, in [0, 1).
        eps: added to the denominator, >= 0.
        weight_decay: L2 penalty (coupled).
        momentum: momentum factor.
        centered: normalize by the estimated variance instead of the second moment.
        scale, clip_norm, maximize, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 0.01, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 scale: float = 1, clip_norm: float = 0, maximize: bool = False, *, clip_value: float = 0,
                 clip_per_tensor: bool = False, foreach: bool | None = None, **options: Any):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, scale=scale, clip_norm=clip_norm, maximize=maximize,
                        clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay", "momentum"):
            validation.nonnegative(where, key, group[key])
        validation.in_unit_interval(where, "alpha", group["alpha"])
        validation.boolean(where, "centered", group["centered"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(
            *gradient_transforms(group),
            AddWeightDecay() if group["weight_decay"] != 0 else None,
            ScaleByRms(centered=bool(group["centered"]), momentum=group["momentum"] != 0),
            ScaleByLearningRate(),
        )
