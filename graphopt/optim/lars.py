"""LARS: SGD with momentum whose step is scaled per tensor by a local learning rate."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, required, validate_gradient_settings
from graphopt.transforms import HeavyBall, ScaleByLarsTrustRatio, ScaleByLearningRate, Transform, chain


class LARS(Optimizer):
    r"""LARS (You et al., 2017, "Large Batch Training of Convolutional Networks", Algorithm 1),
    with Dragon's signature (``dragon.vm.torch.optim.LARS``: ``lr``, ``momentum``, ``trust_coef``,
    ``weight_decay``) and an ``eps``.

    Per tensor, in the order applied (steps 1-4 as in `SGD`: ``scale``, ``clip_value``,
    ``clip_norm``, ``maximize``, each only when on), with ``wd = weight_decay * decay_mult``:

    5. ``local <- trust_coef * ||p|| / (||g|| + wd * ||p|| + eps)``, or ``local <- 1`` if
       ``||p|| = 0`` or ``||g|| = 0``
    6. ``u <- local * (g + wd * p)``
    7. if ``momentum``: ``b <- momentum * b + u`` (``b`` starts at zeros); ``u <- b``
    8. ``p <- p - (lr * lr_mult) * u``

    As in Dragon (and torch's SGD), ``lr`` multiplies the momentum buffer's output; the paper
    puts it inside the buffer, which differs only when ``lr`` changes during training.
    State slots: ``momentum_buffer`` (if ``momentum``) and ``step``. Path: per tensor (step 5
    needs each tensor's norms), never chunked.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate (required).
        momentum: momentum factor, >= 0.
        trust_coef: the trust coefficient ``eta``, >= 0.
        weight_decay: L2 penalty, in the local learning rate and the direction.
        eps: added to the local learning rate's denominator, >= 0.
        scale, clip_norm, maximize, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: Any = required, momentum: float = 0,
                 trust_coef: float = 0.001, weight_decay: float = 0, eps: float = 1e-8, *, scale: float = 1,
                 clip_norm: float = 0, maximize: bool = False, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        defaults = dict(lr=lr, momentum=momentum, trust_coef=trust_coef, weight_decay=weight_decay, eps=eps,
                        scale=scale, clip_norm=clip_norm, maximize=maximize, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "momentum", "trust_coef", "weight_decay", "eps"):
            validation.nonnegative(where, key, group[key])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), ScaleByLarsTrustRatio(),
                     HeavyBall() if group["momentum"] != 0 else None, ScaleByLearningRate())
