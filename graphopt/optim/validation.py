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


def step_count(where: str, value: Any) -> int:
    """A loaded step count: a whole number >= 0 (an int, or a float or 0-d array holding one)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value) or value < 0:
        raise ValueError(f"{where}: 'step' must be a whole number >= 0, got {value!r}")
    return int(value)


def finite_state(where: str, slot: str, array: np.ndarray, nonnegative: bool) -> None:
    """A loaded state slot: finite everywhere, and >= 0 if it is an average of squares."""
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: slot {slot!r} holds non-finite values ({array[~np.isfinite(array)].flat[0]})")
    if nonnegative and (array < 0).any():
        raise ValueError(f"{where}: slot {slot!r} is an average of squares and must be >= 0, "
                         f"got {array[array < 0].flat[0]}")


def pair(where: str, key: str, value: Any, names: str) -> tuple[float, float]:
    """A pair of real numbers such as ``betas`` (``names`` says what it holds, for the message)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: {key!r} must be a pair {names}, got {value!r}")
    return as_float(where, f"{key}[0]", value[0]), as_float(where, f"{key}[1]", value[1])


def betas(where: str, value: Any, key: str = "betas") -> None:
    """``(beta1, beta2)``, each in [0, 1)."""
    pair(where, key, value, "(beta1, beta2)")
    for i, beta in enumerate(value):
        in_unit_interval(where, f"{key}[{i}]", beta)


def in_closed_unit_interval(where: str, key: str, value: Any) -> None:
    """``0 <= value <= 1`` (Adadelta's ``rho``, which torch lets reach 1)."""
    if not 0.0 <= as_float(where, key, value) <= 1.0:
        raise ValueError(f"{where}: {key!r} must be in [0, 1], got {value!r}")


def not_differentiable(kind: str, differentiable: bool) -> None:
    """torch's ``differentiable=True``: graphopt's update graphs are not differentiated through."""
    if differentiable:
        raise NotImplementedError(f"{kind}: differentiable=True is not supported; graphopt's update "
                                  "graphs are not differentiated through")


def as_tuple(value: Any) -> Any:
    """A constructor's pair setting (``betas``) as a tuple; anything not a list or tuple as it is,
    for `pair` to refuse with the group's name."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def scalar_state(where: str, slot: str, value: Any, unit: bool) -> float:
    """A loaded per-tensor scalar slot: a finite real number (or 0-d array), in [0, 1] if ``unit``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{where}: slot {slot!r} must be a finite number (a float or a 0-d array), got {value!r}")
    if unit and not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: slot {slot!r} is a product of factors in [0, 1] and must be in [0, 1], "
                         f"got {value!r}")
    return float(value)
