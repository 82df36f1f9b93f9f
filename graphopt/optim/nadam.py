"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import (Optimizer, gradient_transforms, validate_gradient_settings,
                                      weight_decay_transform)
from graphopt.transforms import ScaleByLearningRate, ScaleByNadam, Transform, chain


class NAdam(Optimizer):
    r"""NAdam (Dozat, 2016), torch.optim.NAdam's formula.

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``g <- g + (weight_decay * decay_mult) * p``, or with ``decoupled_weight_decay``
       ``p <- p * (1 - (lr * lr_mult) * (weight_decay * decay_mult))``
    6. ``mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``, ``mu_next`` the same at ``t + 1``,
       ``mu_product <- mu_product * mu``
    7. ``m <- beta1 * m + (1 - beta1) * g``, ``v <- beta2 * v + (1 - beta2) * g * g``
    8. ``p <- p - (lr * lr_mult) * ((1 - mu) / (1 - mu_product) * g + mu_next / (1 - mu_product * mu_next) * m)
       / (sqrt(v / (1 - beta2 ** t)) + eps)``

    State: ``exp_avg``, ``exp_avg_sq``, ``mu_product`` (a float per tensor, 1 before the first
    step; torch keeps a 0-d tensor), and ``step``.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate.
        betas: averaging coefficients of the first and second moments, each in [0, 1).
        eps: added to the denominator, >= 0.
        weight_decay: weight decay, >= 0 (coupled L2 unless ``decoupled_weight_decay``).
        momentum_decay: the momentum schedule's decay, >= 0.
        decoupled_weight_decay: shrink the parameter (NAdamW) instead of adding an L2 term.
        foreach, capturable: accepted for torch compatibility (no effect).
        differentiable: not supported (raises NotImplementedError if True).
        maximize, scale, clip_norm, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, scale: float = 1, clip_norm: float = 0, clip_value: float = 0,
                 clip_per_tensor: bool = False, **options: Any):
        validation.not_differentiable("NAdam", differentiable)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, scale=scale, clip_norm=clip_norm, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps", "weight_decay", "momentum_decay"):
            validation.nonnegative(where, key, group[key])
        validation.betas(where, group["betas"])
        validation.boolean(where, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        decay = weight_decay_transform(group, group["decoupled_weight_decay"])
        return chain(*gradient_transforms(group), decay, ScaleByNadam(), ScaleByLearningRate())
