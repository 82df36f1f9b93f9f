"""`Parameter`: a trainable numpy array and its gradient."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from graphopt.symbolic.dtypes import FLOAT_DTYPES


class Parameter:
    """A trainable array, as ``torch.nn.Parameter`` is a trainable tensor.

    ``data`` is a C-contiguous numpy array that optimizers update *in place*, so a
    reference to it stays current after ``step()``. Assigning ``data`` copies the new
    values into that array. ``grad`` is a numpy array of the same shape and dtype, or
    None; a parameter whose grad is None is skipped by ``step()``.

    An optimizer *adopts* its parameters: their values move into its flat buffers and
    ``data`` becomes a view of them (so take references to ``data`` after building
    the optimizer). From then on ``grad`` is None or a view of the optimizer's flat
    gradient buffer: assigning an array copies it there, and accumulating in place
    (``p.grad += g``) costs no copy at all.

    >>> w = Parameter(np.zeros(3, np.float32), name="w")
    >>> w.grad = np.ones(3, np.float32)
    """

    __slots__ = ("_data", "_grad", "_grad_storage", "_owner", "name", "requires_grad")

    def __init__(self, data: Any, *, name: str | None = None, requires_grad: bool = True):
        array = np.array(data, copy=True, order="C")
        if array.dtype not in FLOAT_DTYPES:
            raise TypeError(f"Parameter{_label(name)}: expected a float16, float32 or float64 array, "
                            f"got {array.dtype}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Parameter: name must be a non-empty string, got {name!r}")
        self._data = array
        self._grad: np.ndarray | None = None
        self._grad_storage: np.ndarray | None = None  # the adopting optimizer's gradient view
        self._owner: weakref.ref | None = None
        self.name = name
        self.requires_grad = bool(requires_grad)

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        value = np.asarray(value)
        if value.shape != self._data.shape:
            raise ValueError(f"{self!r}.data: expected shape {self._data.shape}, got {value.shape}")
        np.copyto(self._data, value, casting="same_kind")

    @property
    def grad(self) -> np.ndarray | None:
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        if value is None:
            self._grad = None
            return
        value = check_grad(self, value)
        if self._grad_storage is not None and value is not self._grad_storage:
            np.copyto(self._grad_storage, value)
            value = self._grad_storage
        self._grad = value

    def _adopt(self, data: np.ndarray, grad: np.ndarray, owner: object) -> None:
        """Move into ``data`` and take ``grad`` as gradient storage (views of ``owner``'s buffers)."""
        current = self._owner() if self._owner is not None else None
        if current is not None and current is not owner:
            raise ValueError(f"{self!r} already belongs to another optimizer; a parameter can be "
                             "optimized by one optimizer at a time")
        np.copyto(data, self._data)
        self._data = data
        if self._grad is not None:
            np.copyto(grad, self._grad)
            self._grad = grad
        self._grad_storage = grad
        self._owner = weakref.ref(owner)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def size(self) -> int:
        return self._data.size

    def numpy(self) -> np.ndarray:
        return self._data

    def __repr__(self) -> str:
        return f"Parameter{_label(self.name)}(shape={self.shape}, dtype={self.dtype})"


def _label(name: str | None) -> str:
    return f" {name!r}" if name else ""


def check_grad(param: Parameter | np.ndarray, grad: Any, label: str | None = None) -> np.ndarray:
    """``grad`` if it is a numpy array of ``param``'s shape and dtype; else a clear error naming ``label``."""
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"gradient of {label or repr(param)}: expected a numpy array, got {type(grad).__name__}")
    if grad.shape != param.shape:
        raise ValueError(f"gradient of {label or repr(param)}: expected shape {param.shape}, got {grad.shape}")
    if grad.dtype != param.dtype:
        raise TypeError(f"gradient of {label or repr(param)}: expected dtype {param.dtype}, got {grad.dtype}")
    return grad
