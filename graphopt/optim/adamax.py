"""Adamax, Adam's variant over the infinity norm."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, ScaleByAdamax, ScaleByLearningRate, Transform, chain


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2014, section 7), torch.optim.Adamax's formula.

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. ``m <- beta1 * m + (1 - beta1) * g``
    7. ``n <- max(beta2 * n, |g| + eps)``
    8. ``p <- p - (lr * lr_mult) / (1 - beta1 ** t) * m / n``

    State slots: ``exp_avg`` (``m``), ``exp_inf`` (``n``) and ``step``.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        betas: averaging coefficients of the first moment and of the infinity norm, each in [0, 1).
        eps: added to ``|g|``, >= 0.
        weight_decay: L2 penalty (coupled).
        foreach, capturable: accepted for torch compatibility (no effect).
        maximize, scale, clip_norm, clip_value, clip_per_tensor, differentiable: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False, scale: float = 1, clip_norm: float = 0, clip_value: float = 0,
                 clip_per_tensor: bool = False, **options: Any):
        validation.not_differentiable("Adamax", differentiable)
        defaults = dict(lr=lr, betas=validation.as_tuple(betas), eps=eps, weight_decay=weight_decay,
                        maximize=maximize, scale=scale, clip_norm=clip_norm, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.betas(where, group["betas"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(
            *gradient_transforms(group),
            AddWeightDecay() if group["weight_decay"] != 0 else None,
            ScaleByAdamax(),
            ScaleByLearningRate(),
        )
