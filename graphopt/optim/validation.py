"""Checks of hyperparameters; every message names the group and the setting."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def as_float(where: str, key: str, value: Any) -> float:
    """``value`` as a float if it is a real number (or a 0-d array of one)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {key!r} must be a real number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{where}: {key!r} must be finite, got {result}")
    return result


def nonnegative(where: str, key: str, value: Any) -> None:
    if as_float(where, key, value) < 0:
        raise ValueError(f"{where}: {key!r} must be >= 0, got {value!r}")


def in_unit_interval(where: str, key: str, value: Any) -> None:
    """``0 <= value < 1``, as betas and averaging rates must be."""
    if not 0.0 <= as_float(where, key, value) < 1.0:
        raise ValueError(f"{where}: {key!r} must be in [0, 1), got {value!r}")


def boolean(where: str, key: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {key!r} must be True or False, got {value!r}")
