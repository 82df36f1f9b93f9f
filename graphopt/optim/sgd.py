"""Stochastic gradient descent, with momentum, dampening and Nesterov."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, required, validate_gradient_settings
from graphopt.transforms import AddWeightDecay, Momentum, ScaleByLearningRate, Transform, chain


class SGD(Optimizer):
    r"""SGD with optional momentum (Polyak) and Nesterov momentum (Sutskever et al.).

    Per tensor, with ``t`` its step count, in the order applied (torch.optim.SGD's
    formula; the first four lines are shared by every optimizer here and are skipped
    when off):

    1. ``g <- scale * g``
    2. ``g <- clip(g, -clip_value, clip_value)``
    3. ``g <- g * clip_norm / max(norm(g), clip_norm)``, the norm over the group
       (or per tensor if ``clip_per_tensor``)
    4. ``g <- -g`` if ``maximize``
    5. ``g <- g + (weight_decay * decay_mult) * p``
    6. if ``momentum``: ``b <- g`` when ``t = 1``, else ``b <- momentum * b + (1 - dampening) * g``;
       then ``g <- g + momentum * b`` if ``nesterov``, else ``g <- b``
    7. ``p <- p - (lr * lr_mult) * g``

    Note that, as in torch, ``lr`` multiplies the momentum buffer's output rather than
    entering the buffer (Dragon's formula puts it inside); the two differ only when
    ``lr`` changes during training.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate (required).
        momentum: momentum factor.
        dampening: dampening of the momentum's gradient term.
        weight_decay: L2 penalty (coupled: added to the gradient).
        nesterov: use Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
        scale: factor applied to the gradient first.
        clip_norm: maximum L2 norm of the gradient; 0 disables clipping.
        maximize: maximize the objective instead of minimizing it.
        clip_value: maximum absolute value of a gradient element; 0 disables.
        clip_per_tensor: clip each tensor's norm on its own instead of the group's.
        foreach: accepted for torch compatibility; a group's tensors are always updated together.
        differentiable: not supported (raises NotImplementedError if True).
        options: every optimizer's ``providers``, ``runtime``, ``skip_nonfinite`` and ``averaging``
            (see `Optimizer`).

    Example:
        >>> w = graphopt.Parameter(np.zeros(3, np.float32))
        >>> opt = graphopt.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> w.grad = np.ones(3, np.float32); opt.step()
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: Any = required, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, scale: float = 1,
                 clip_norm: float = 0, maximize: bool = False, *, clip_value: float = 0,
                 clip_per_tensor: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 **options: Any):
        validation.not_differentiable("SGD", differentiable)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, scale=scale, clip_norm=clip_norm, maximize=maximize,
                        clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "momentum", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        validation.as_float(where, "dampening", group["dampening"])
        validation.boolean(where, "nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov=True needs momentum > 0 and dampening = 0, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(
            *gradient_transforms(group),
            AddWeightDecay() if group["weight_decay"] != 0 else None,
            Momentum(nesterov=bool(group["nesterov"])) if group["momentum"] != 0 else None,
            ScaleByLearningRate(),
        )
