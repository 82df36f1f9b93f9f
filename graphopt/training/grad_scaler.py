"""`GradScaler`: torch.amp.GradScaler's dynamic loss scale, for a `Trainer`'s training step.

torch does it in three calls (``scale(loss).backward()``, ``step(optimizer)``, ``update()``);
a Trainer with a GradScaler does all three inside its one training-step graph
(`graphopt.update.guard`, in the order applied there):

1. the gradients are those of ``loss * scale``;
2. they are unscaled, ``g * float32(1 / scale)``, and the step is skipped whole if any is NaN or inf;
3. skipped: ``scale <- scale * backoff_factor``, and the count of successful steps restarts;
   else after ``growth_interval`` successful steps in a row, ``scale <- scale * growth_factor``.

This object holds the scale (float32, as torch's) and the count between steps, and its
settings; `Trainer.state_dict` saves it with torch's keys.

It also has torch's eager API, for gradients computed outside a Trainer (and for the Trainer's
`accumulate`, whose summed gradients meet the optimizer outside the training-step graph):
``scale(loss)``, ``unscale_(optimizer)``, ``step(optimizer)`` (skipped, changing nothing, when an
unscaled gradient is not finite) and ``update()``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from graphopt import names
from graphopt.update.guard import SCALE, SETTINGS, TRACKER

_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


class GradScaler:
    """Dynamic loss scaling with torch's defaults and semantics (see the module docstring).

    Args:
        init_scale: the first scale, finite and > 0.
        growth_factor: multiplies the scale after ``growth_interval`` finite steps, > 1.
        backoff_factor: multiplies the scale after a skipped step, in (0, 1).
        growth_interval: finite steps in a row before the scale grows, an int >= 1.
        enabled: False makes the Trainer train unscaled and unguarded, as torch's does.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        _check_settings("GradScaler", init_scale, growth_factor, backoff_factor, growth_interval)
        self.enabled = bool(enabled)
        self._scale = np.array(init_scale, np.float32)
        self._growth_tracker = 0
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._found: dict[int, bool] = {}  # id(optimizer) -> found_inf, for optimizers unscaled since update()

    def get_scale(self) -> float:
        return float(self._scale) if self.enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def is_enabled(self) -> bool:
        return self.enabled

    # -- torch's eager API ----------------------------------------------------------------

    def scale(self, outputs: Any) -> Any:
        """``outputs * scale`` (a loss, before its gradients are computed)."""
        return outputs * self._scale if self.enabled else outputs

    def unscale_(self, optimizer: Any) -> None:
        """Divide ``optimizer``'s gradients by the scale in place (``g * float32(1 / scale)``) and record
        whether any is NaN or inf; once per optimizer between `update` calls, as in torch."""
        if not self.enabled:
            return
        if id(optimizer) in self._found:
            raise RuntimeError("GradScaler.unscale_: already called on this optimizer since the last update()")
        inv_scale = np.float32(1.0 / np.float64(self._scale))
        grads = optimizer._gradient_arrays()  # noqa: SLF001 - what its next step reads (summed ones too)
        for grad in grads:
            grad *= inv_scale.astype(grad.dtype)
        self._found[id(optimizer)] = optimizer._executor.any_nonfinite(grads)  # noqa: SLF001

    def step(self, optimizer: Any) -> bool:
        """Unscale (if not done yet), then ``optimizer.step()`` unless a gradient is not finite; returns
        whether the step ran. A skipped step changes nothing and is counted by ``optimizer.skipped_steps``."""
        if not self.enabled:
            optimizer.step()
            return True
        if id(optimizer) not in self._found:
            self.unscale_(optimizer)
        found = self._found[id(optimizer)]
        optimizer.found_inf = found
        if found:
            optimizer.skipped_steps += 1
            optimizer._advance_schedules()  # noqa: SLF001 - a skipped step still counts for a schedule
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """torch's ``_amp_update_scale_`` after the steps since the last update: back off if any
        optimizer found a non-finite gradient, else count a finite step and grow every
        ``growth_interval`` of them (if the grown scale is finite)."""
        if not self.enabled:
            return
        if any(self._found.values()):
            self._scale = np.float32(np.float64(self._scale) * self._backoff_factor)  # not below float32's least
            self._growth_tracker = 0
        else:
            successful = self._growth_tracker + 1
            if successful == self._growth_interval:
                with np.errstate(over="ignore"):
                    grown = np.float32(np.float64(self._scale) * self._growth_factor)
                self._scale = grown if np.isfinite(grown) else self._scale
                successful = 0
            self._growth_tracker = successful
        self._scale = np.array(self._scale, np.float32)
        self._found.clear()

    # -- inside the training step ---------------------------------------------------------

    def feeds(self) -> dict[str, np.ndarray]:
        """The training step's inputs for the scale (`graphopt.update.guard`)."""
        settings = (self._growth_factor, self._backoff_factor, float(self._growth_interval))
        return {SCALE: self._scale.copy(), TRACKER: np.array(self._growth_tracker, np.int64),
                **{names.grad_scaler(k): np.array(v) for k, v in zip(SETTINGS, settings)}}

    def outputs(self) -> dict[str, np.ndarray]:
        """Empty arrays for the step's outputs of the scale's new state."""
        return {names.new(SCALE): np.empty((), np.float32), names.new(TRACKER): np.empty((), np.int64)}

    def update_from(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Take the new scale and count a training step computed."""
        self._scale = np.array(outputs[names.new(SCALE)], np.float32)
        self._growth_tracker = int(outputs[names.new(TRACKER)])

    def state_dict(self) -> dict[str, Any]:
        """torch's: ``scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``, ``_growth_tracker``
        (empty when disabled, as torch's)."""
        if not self.enabled:
            return {}
        return {"scale": float(self._scale), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`; raises, changing nothing, if a key is missing or a value out of range."""
        self._apply(self.validated(state_dict))

    def validated(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        where = "GradScaler.load_state_dict"
        if not self.enabled:
            if state_dict:
                raise ValueError(f"{where}: this GradScaler is disabled; its state dict is empty")
            return {}
        if not isinstance(state_dict, Mapping) or set(state_dict) != set(_KEYS):
            got = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"{where}: expected keys {sorted(_KEYS)}, got {got}")
        _check_settings(where, state_dict["scale"], state_dict["growth_factor"], state_dict["backoff_factor"],
                        state_dict["growth_interval"])
        tracker = state_dict["_growth_tracker"]
        if isinstance(tracker, bool) or not isinstance(tracker, (int, np.integer)) or \
                not 0 <= tracker < state_dict["growth_interval"]:
            raise ValueError(f"{where}: '_growth_tracker' must be an int in [0, growth_interval), got {tracker!r}")
        return dict(state_dict)

    def _apply(self, loaded: Mapping[str, Any]) -> None:
        if not loaded:
            return
        self._scale = np.array(loaded["scale"], np.float32)
        self._growth_factor, self._backoff_factor = float(loaded["growth_factor"]), float(loaded["backoff_factor"])
        self._growth_interval, self._growth_tracker = int(loaded["growth_interval"]), int(loaded["_growth_tracker"])

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self.get_scale()}, growth_factor={self._growth_factor}, backoff_factor="
                f"{self._backoff_factor}, growth_interval={self._growth_interval}, enabled={self.enabled})")


def _check_settings(where: str, scale: Any, growth: Any, backoff: Any, interval: Any) -> None:
    def number(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ValueError(f"{where}: {key!r} must be a finite number, got {value!r}")
        return float(value)

    if not 0 < number("scale" if where != "GradScaler" else "init_scale", scale) <= float(np.finfo(np.float32).max):
        raise ValueError(f"{where}: the scale must be > 0 and finite in float32, got {scale!r}")
    if not number("growth_factor", growth) > 1:
        raise ValueError(f"{where}: 'growth_factor' must be > 1, got {growth!r}")
    if not 0 < number("backoff_factor", backoff) < 1:
        raise ValueError(f"{where}: 'backoff_factor' must be in (0, 1), got {backoff!r}")
    if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
        raise ValueError(f"{where}: 'growth_interval' must be an int >= 1, got {interval!r}")
