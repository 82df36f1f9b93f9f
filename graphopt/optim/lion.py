"""Lion, sign descent on an interpolated momentum (not in torch.optim)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import DecoupledWeightDecay, ScaleByLearningRate, ScaleByLion, Transform, chain


class Lion(Optimizer):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2).

    Per tensor, in the order applied (steps 1-4 as in `SGD`: ``scale``, ``clip_value``,
    ``clip_norm``, ``maximize``, each only when on):

    5. ``p <- p * (1 - (lr * lr_mult) * (weight_decay * decay_mult))`` (decoupled)
    6. ``u <- sign(beta1 * m + (1 - beta1) * g)``
    7. ``m <- beta2 * m + (1 - beta2) * g``
    8. ``p <- p - (lr * lr_mult) * u``

    State slots: ``exp_avg`` (``m``) and ``step``. The paper suggests a learning rate 3-10x
    smaller than AdamW's and a weight decay 3-10x larger.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        betas: ``(beta1, beta2)``: interpolation factor of the update, averaging coefficient of
            the momentum, each in [0, 1).
        weight_decay: decoupled weight decay.
        maximize, scale, clip_norm, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0, *, maximize: bool = False,
                 scale: float = 1, clip_norm: float = 0, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        defaults = dict(lr=lr, betas=validation.as_tuple(betas), weight_decay=weight_decay, maximize=maximize,
                        scale=scale, clip_norm=clip_norm, clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.betas(where, group["betas"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(
            *gradient_transforms(group),
            DecoupledWeightDecay() if group["weight_decay"] != 0 else None,
            ScaleByLion(),
            ScaleByLearningRate(),
        )
