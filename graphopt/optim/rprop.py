"""Rprop, resilient backpropagation."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import RpropStep, Transform, chain


class Rprop(Optimizer):
    r"""Rprop (Riedmiller & Braun, 1993), torch.optim.Rprop's formula.

    Per tensor, with ``t`` its step count, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on):

    5. ``d <- lr * lr_mult`` when ``t = 1`` (later changes of ``lr`` have no effect, as in torch)
    6. ``x = g * prev``; ``d <- clip(d * f, step_size_min, step_size_max)``, ``f = etaplus``
       where ``x > 0``, ``etaminus`` where ``x < 0``, else 1
    7. ``g <- 0`` where ``x < 0``; ``prev <- g``
    8. ``p <- p - sign(g) * d``

    State slots: ``prev``, ``step_size`` (``d``) and ``step``. Rprop has no weight decay, so
    ``decay_mult`` has no effect.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: the initial step size of every element.
        etas: ``(etaminus, etaplus)``, the step size's factors, ``0 < etaminus < 1 < etaplus``.
        step_sizes: ``(step_size_min, step_size_max)``, its bounds, ``0 <= min <= max``.
        foreach, capturable: accepted for torch compatibility (no effect).
        maximize, scale, clip_norm, clip_value, clip_per_tensor, differentiable: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"etas": ("etaminus", "etaplus"), "step_sizes": ("step_size_min", "step_size_max")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False,
                 scale: float = 1, clip_norm: float = 0, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        validation.not_differentiable("Rprop", differentiable)
        defaults = dict(lr=lr, etas=validation.as_tuple(etas), step_sizes=validation.as_tuple(step_sizes),
                        maximize=maximize, scale=scale, clip_norm=clip_norm, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        validation.nonnegative(where, "lr", group["lr"])
        etaminus, etaplus = validation.pair(where, "etas", group["etas"], "(etaminus, etaplus)")
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"{where}: 'etas' must satisfy 0 < etaminus < 1 < etaplus, got {group['etas']!r}")
        low, high = validation.pair(where, "step_sizes", group["step_sizes"], "(step_size_min, step_size_max)")
        if not 0.0 <= low <= high:
            raise ValueError(f"{where}: 'step_sizes' must satisfy 0 <= step_size_min <= step_size_max, "
                             f"got {group['step_sizes']!r}")

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), RpropStep())
