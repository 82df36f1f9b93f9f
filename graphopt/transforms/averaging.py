"""Weight averaging: an exponential moving average (EMA) or torch's SWA average of the parameters,
kept as a state slot and updated in the same graph as the parameters.

`EMA` and `SWA` are the settings a user passes (``optim.SGD(..., averaging=EMA(0.999))``);
`AverageWeights` is the transform they add at the end of every group's chain. With ``t`` the
tensor's step count (this update's, from 1) and ``p`` its new value, in the order applied:

1. the averaging steps are ``t = start + 1, start + 1 + every, ...``: ``k = t - start - 1``,
   ``active = k >= 0 and k mod every == 0``, and ``n = floor(k / every)`` averages came before;
2. the weight of ``p``: SWA, ``1 / (n + 1)`` (the running mean of torch's ``AveragedModel``);
   EMA, ``1 - decay_n`` with ``decay_n = decay``, or with ``warmup``
   ``decay_n = clip(1 - (1 + n / warmup_gamma) ** -warmup_power, min_decay, decay)`` (timm's);
3. ``a <- p`` on the first averaging step (``n = 0``; torch's ``AveragedModel`` copies there),
   else ``a <- a + (p - a) * weight`` (SWA: ``a + (p - a) / (n + 1)``, torch's ``swa`` formula)
   on averaging steps, and ``a`` unchanged on the others (slot ``averaged``).

A tensor's average moves when the tensor is updated (it has a gradient), on its own step count;
torch's ``AveragedModel`` also moves the average of a parameter that had no gradient towards its
unchanged value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.symbolic import Sym, cast, maximum, minimum, where
from graphopt.transforms.base import Context, Transform, Updates

SLOT = "averaged"


@dataclass(frozen=True)
class EMA:
    """An exponential moving average of the weights (settings; see the module docstring).

    Args:
        decay: the average's decay, in [0, 1).
        start: optimizer steps before the first averaging step (timm's ``update_after_step``).
        every: average on every ``every``-th step from there.
        warmup: ramp the decay up as timm's ``ModelEmaV3`` does, from 0 to ``decay``.
        warmup_gamma, warmup_power: the ramp ``1 - (1 + n / gamma) ** -power``.
        min_decay: the lowest decay the ramp gives.
    """

    decay: float = 0.9999
    start: int = 0
    every: int = 1
    warmup: bool = False
    warmup_gamma: float = 1.0
    warmup_power: float = 2 / 3
    min_decay: float = 0.0

    def __post_init__(self):
        _check(self, "EMA")
        if not 0 <= self.decay < 1 or not 0 <= self.min_decay <= self.decay:
            raise ValueError(f"EMA: need 0 <= min_decay <= decay < 1, got decay={self.decay!r}, "
                             f"min_decay={self.min_decay!r}")
        if not self.warmup_gamma > 0 or not self.warmup_power > 0:
            raise ValueError(f"EMA: warmup_gamma and warmup_power must be > 0, got {self.warmup_gamma!r}, "
                             f"{self.warmup_power!r}")

    def transform(self) -> AverageWeights:
        return AverageWeights("ema", self.warmup)

    def hypers(self) -> dict[str, float]:
        return {f"averaging_{k}": float(getattr(self, k)) for k in
                ("decay", "start", "every", "warmup_gamma", "warmup_power", "min_decay")}


@dataclass(frozen=True)
class SWA:
    """Stochastic weight averaging (Izmailov et al., 2018): the running mean of the weights at
    steps ``start + 1, start + 1 + every, ...`` (torch's ``AveragedModel`` updated there)."""

    start: int = 0
    every: int = 1

    def __post_init__(self):
        _check(self, "SWA")

    def transform(self) -> AverageWeights:
        return AverageWeights("swa", False)

    def hypers(self) -> dict[str, float]:
        return {"averaging_start": float(self.start), "averaging_every": float(self.every)}


def _check(settings, kind: str) -> None:
    for key in ("start", "every"):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if key == "every" else 0):
            raise ValueError(f"{kind}: {key!r} must be an int >= {1 if key == 'every' else 0}, got {value!r}")


@dataclass(frozen=True)
class AverageWeights(Transform):
    """Keeps slot ``averaged``, the average of the parameter's new values (module docstring)."""

    kind: str  # "ema" or "swa"
    warmup: bool = False

    def all_slots(self) -> tuple[str, ...]:
        return (SLOT,)

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        start, every = ctx.hyper("averaging_start"), ctx.hyper("averaging_every")
        for i, u in enumerate(updates):
            k = ctx.step(i) - start - 1.0
            n = _floor(k / every)
            active = _and(k >= 0.0, _equal(k - n * every, 0.0))
            first = _and(active, _equal(n, 0.0))
            p, a = ctx.params[i] + u, ctx.state(i, SLOT)
            if self.kind == "swa":
                moved = a + (p - a) / cast(where(active, n + 1.0, np.inf), p.dtype)
            else:
                moved = a + (p - a) * cast(where(active, 1.0 - self._decay(ctx, n), 0.0), p.dtype)
            ctx.set_state(i, SLOT, where(first, p, moved))
        return updates

    def _decay(self, ctx: Context, n: Sym) -> Sym:
        decay = ctx.hyper("averaging_decay")
        if not self.warmup:
            return decay
        ramp = 1.0 - (1.0 + n / ctx.hyper("averaging_warmup_gamma")) ** (-ctx.hyper("averaging_warmup_power"))
        return _clip(ramp, ctx.hyper("averaging_min_decay"), decay)


def _floor(x: Sym) -> Sym:
    return x.graph.unary("Floor", x)


def _equal(x: Sym, value: float) -> Sym:
    return x.graph.op("Equal", [x, x.graph.constant(value)], dtype=np.dtype(bool), shape=x.shape)


def _and(a: Sym, b: Sym) -> Sym:
    return a.graph.op("And", [a, b], dtype=np.dtype(bool), shape=())


def _clip(x: Sym, low: Sym, high: Sym) -> Sym:
    return minimum(maximum(x, low), high)
