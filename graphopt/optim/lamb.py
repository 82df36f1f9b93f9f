"""LAMB: Adam's direction with decoupled weight decay, scaled per tensor by a trust ratio."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, ScaleByAdam, ScaleByLearningRate, ScaleByTrustRatio, Transform, chain


class LAMB(Optimizer):
    r"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning", Algorithm 2).

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``m <- beta1 * m + (1 - beta1) * g``;  ``v <- beta2 * v + (1 - beta2) * g * g``
    6. ``u <- (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)``
    7. ``u <- u + (weight_decay * decay_mult) * p``               (decoupled: not in ``m``, ``v``)
    8. ``n <- min(||p||, clamp_value)`` if ``clamp_value`` else ``||p||``;
       ``r <- n / ||u||``, or ``r <- 1`` if ``n = 0`` or ``||u|| = 0``
    9. ``p <- p - (lr * lr_mult) * r * u``

    State slots: ``exp_avg``, ``exp_avg_sq`` and ``step``. Path: per tensor (step 8 needs each
    tensor's norms), never chunked. Norms are L2 over the whole tensor, accumulated in float64.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        betas: averaging coefficients of the moments, each in [0, 1).
        eps: added to the denominator, >= 0.
        weight_decay: decoupled weight decay added to the direction (step 7).
        clamp_value: upper bound of ``||p||`` in the trust ratio (the paper's ``phi``); 0 disables.
        scale, clip_norm, maximize, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0,
                 clamp_value: float = 0, *, scale: float = 1, clip_norm: float = 0, maximize: bool = False,
                 clip_value: float = 0, clip_per_tensor: bool = False, **options: Any):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, clamp_value=clamp_value,
                        scale=scale, clip_norm=clip_norm, maximize=maximize, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay", "clamp_value"):
            validation.nonnegative(where, key, group[key])
        validation.betas(where, group["betas"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), ScaleByAdam(),
                     AddWeightDecay() if group["weight_decay"] != 0 else None,
                     ScaleByTrustRatio(clamp=group["clamp_value"] != 0), ScaleByLearningRate())
