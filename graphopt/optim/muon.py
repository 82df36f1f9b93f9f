"""Muon: momentum orthogonalized by Newton-Schulz iterations, for 2-D parameters."""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.parameter import Parameter
from graphopt.transforms import (DecoupledWeightDecay, MuonMomentum, Orthogonalize, ScaleByAdjustedLearningRate,
                                 Transform, chain)
from graphopt.transforms.muon import ADJUST_LR_FNS

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's (a, b, c), from Keller Jordan's Muon


class Muon(Optimizer):
    r"""Muon (Jordan et al., 2024), torch.optim.Muon's signature, defaults and formula.

    Per 2-D tensor ``p`` of shape ``[A, B]``, in the order applied (steps 1-4 as in `SGD`:
    ``scale``, ``clip_value``, ``clip_norm``, ``maximize``, each only when on; torch's Muon has
    none of them):

    5. ``b <- b + (1 - momentum) * (g - b)``; ``u <- g + momentum * (b - g)`` if ``nesterov``, else ``u <- b``
    6. ``u <- NS(u)``: ``X <- u`` (``u^T`` if ``A > B``); ``X <- X / max(||X||_F, eps)``; ``ns_steps`` times
       ``M <- X X^T``, ``X <- a * X + (b * M + c * M M) X``; ``u <- X`` (transposed back)
    7. ``p <- p * (1 - (lr * lr_mult) * (weight_decay * decay_mult))``
    8. ``p <- p - (lr * lr_mult * ratio) * u``, ``ratio = sqrt(max(1, A / B))`` (``adjust_lr_fn`` None or
       "original") or ``0.2 * sqrt(max(A, B))`` ("match_rms_adamw")

    State slots: ``momentum_buffer`` and ``step``. Path: per tensor (step 6 needs each tensor's
    norm and matrix products, ``MatMul`` nodes), never chunked.

    Differs from torch in precision only: torch runs step 6 in bfloat16 (8-bit mantissa) and adds
    the bfloat16 result to the parameter; graphopt runs it in the parameter's dtype, so its
    orthogonalized update is the one torch's algorithm gives in exact arithmetic, to float32 or
    float64 rounding.

    Args:
        params: 2-D Parameters, or dicts defining param groups (any other shape raises ValueError).
        lr: learning rate.
        weight_decay: decoupled weight decay (step 7).
        momentum: momentum factor, >= 0.
        nesterov: use the Nesterov form of step 5.
        ns_coefficients: ``(a, b, c)`` of the Newton-Schulz polynomial.
        eps: lower bound of the norm that step 6 divides by, >= 0.
        ns_steps: Newton-Schulz iterations, an int in [0, 100).
        adjust_lr_fn: None, "original" or "match_rms_adamw" (step 8).
        scale, clip_norm, maximize, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"ns_coefficients": ("ns_a", "ns_b", "ns_c")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: str | None = None, *, scale: float = 1, clip_norm: float = 0,
                 maximize: bool = False, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients) if isinstance(ns_coefficients, (tuple, list))
                        else ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, scale=scale,
                        clip_norm=clip_norm, maximize=maximize, clip_value=clip_value,
                        clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """As `Optimizer.add_param_group`; every parameter must be 2-D (torch's error otherwise)."""
        if isinstance(param_group, Mapping):
            params = param_group.get("params")
            params = [params] if isinstance(params, Parameter) else list(params or ())
            for p in params:
                if isinstance(p, Parameter) and len(p.shape) != 2:
                    raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                                     f"{tuple(p.shape)} ({p.name or 'unnamed'})")
            param_group = {**param_group, "params": params}
        super().add_param_group(param_group)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "weight_decay", "momentum", "eps"):
            validation.nonnegative(where, key, group[key])
        validation.boolean(where, "nesterov", group["nesterov"])
        coefficients = group["ns_coefficients"]
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError(f"{where}: 'ns_coefficients' must be a tuple of exactly 3 values (a, b, c), "
                             f"got {coefficients!r}")
        for i, value in enumerate(coefficients):
            validation.as_float(where, f"ns_coefficients[{i}]", value)
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 <= steps < 100:
            raise ValueError(f"{where}: 'ns_steps' must be an int in [0, 100), got {steps!r}")
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"{where}: 'adjust_lr_fn' must be one of {ADJUST_LR_FNS}, got {group['adjust_lr_fn']!r}")

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), MuonMomentum(nesterov=bool(group["nesterov"])),
                     Orthogonalize(ns_steps=int(group["ns_steps"])),
                     DecoupledWeightDecay() if group["weight_decay"] != 0 else None,
                     ScaleByAdjustedLearningRate(group["adjust_lr_fn"]))
