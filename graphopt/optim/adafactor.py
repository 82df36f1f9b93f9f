"""Adafactor: factored second moments, as torch.optim.Adafactor has them."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import DecoupledWeightDecay, ScaleByAdafactor, Transform, chain


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018), torch.optim.Adafactor's formula.

    Per tensor, with ``t`` its step count, ``n`` its number of elements and ``lr`` meaning
    ``lr * lr_mult``, in the order applied (steps 1-4 as in `SGD`: ``scale``, ``clip_value``,
    ``clip_norm``, ``maximize``, each only when on):

    5. ``w = t ** beta2_decay``, ``alpha = max(eps2, norm(p) / sqrt(n)) * min(lr, 1 / sqrt(t))``
    6. ``p <- p * (1 - lr * (weight_decay * decay_mult))``
    7. rank >= 2 (factored over the last two axes): ``R <- R + w * (mean(g * g, -1) - R)``,
       ``C <- C + w * (mean(g * g, -2) - C)``, ``V = (R @ C) / max(mean(R, -2), eps1)``;
       rank < 2: ``V <- V + w * (g * g - V)``
    8. ``u = g / sqrt(max(V, eps1 ** 2))``
    9. ``p <- p - alpha / max(1, norm(u) / (sqrt(n) * d)) * u``

    ``eps = (eps1, eps2)``; ``eps1 = None`` takes the machine epsilon of each tensor's dtype (torch
    takes that of the group's first tensor). State: ``row_var`` (shape ``[..., rows, 1]``) and
    ``col_var`` (``[..., 1, cols]``) for tensors of rank >= 2, ``variance`` for the others, as in
    torch, and ``step``. Its norms are per tensor, so a group always runs per tensor.

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: the most the relative step size may be, >= 0.
        beta2_decay: the second moments' averaging exponent, <= 0.
        eps: ``(eps1, eps2)``: the floor of the second moments (None: the dtype's epsilon) and of
            the parameters' scale, each >= 0.
        d: the update clipping threshold, >= 1.
        weight_decay: decoupled weight decay, >= 0.
        foreach: accepted for torch compatibility (no effect).
        maximize, scale, clip_norm, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"eps": ("eps1", "eps2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False, scale: float = 1, clip_norm: float = 0,
                 clip_value: float = 0, clip_per_tensor: bool = False, **options: Any):
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d, weight_decay=weight_decay,
                        maximize=maximize, scale=scale, clip_norm=clip_norm, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "weight_decay"):
            validation.nonnegative(where, key, group[key])
        if validation.as_float(where, "beta2_decay", group["beta2_decay"]) > 0:
            raise ValueError(f"{where}: 'beta2_decay' must be <= 0, got {group['beta2_decay']!r}")
        if validation.as_float(where, "d", group["d"]) < 1:
            raise ValueError(f"{where}: 'd' must be >= 1, got {group['d']!r}")
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"{where}: 'eps' must be a pair (eps1 or None, eps2), got {eps!r}")
        if eps[0] is not None:
            validation.nonnegative(where, "eps[0]", eps[0])
        validation.nonnegative(where, "eps[1]", eps[1])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), ScaleByAdafactor(eps1_from_dtype=group["eps"][0] is None),
                     DecoupledWeightDecay() if group["weight_decay"] != 0 else None)
