"""Adam and AdamW, with AMSGrad."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import (Optimizer, gradient_transforms, validate_gradient_settings,
                                      weight_decay_transform)
from graphopt.transforms import ScaleByAdam, ScaleByLearningRate, Transform, chain


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2014), torch.optim.Adam's formula.

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. ``m <- beta1 * m + (1 - beta1) * g``
    7. ``v <- beta2 * v + (1 - beta2) * g * g``
    8. if ``amsgrad``: ``v_max <- max(v_max, v)``, used in place of ``v`` below
    9. ``p <- p - (lr * lr_mult) / (1 - beta1 ** t) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)``

    State slots: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad), and ``step``.
    Dragon writes the same update as ``lr * correction * m / (sqrt(v) + eps)``; the
    two differ only in where ``eps`` sits, and graphopt follows torch.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        betas: averaging coefficients of the first and second moments, each in [0, 1).
        eps: added to the denominator, >= 0.
        weight_decay: L2 penalty (coupled; see `AdamW` for decoupled decay).
        amsgrad: use the maximum of past second moments (Reddi et al., 2018).
        scale, clip_norm, maximize, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}
    _decoupled = False

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, scale: float = 1, clip_norm: float = 0, maximize: bool = False, *,
                 clip_value: float = 0, clip_per_tensor: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, **options: Any):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        scale=scale, clip_norm=clip_norm, maximize=maximize, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.betas(where, group["betas"])
        validation.boolean(where, "amsgrad", group["amsgrad"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        decay = weight_decay_transform(group, self._decoupled)
        return chain(*gradient_transforms(group), decay, ScaleByAdam(amsgrad=bool(group["amsgrad"])),
                     ScaleByLearningRate())


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), torch.optim.AdamW's formula.

    As `Adam`, except that step 5 is replaced by shrinking the parameter before the
    update: ``p <- p * (1 - (lr * lr_mult) * (weight_decay * decay_mult))``.
    The default ``weight_decay`` is 1e-2.
    """

    _decoupled = True

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, scale: float = 1, clip_norm: float = 0, maximize: bool = False, *,
                 clip_value: float = 0, clip_per_tensor: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, **options: Any):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, scale, clip_norm, maximize,
                         clip_value=clip_value, clip_per_tensor=clip_per_tensor, **options)
