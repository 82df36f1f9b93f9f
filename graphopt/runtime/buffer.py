"""`Buffer`: an array the runtime owns, in host memory or on a GPU, bound without copies."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from graphopt.runtime.providers import Device


class Buffer:
    """An ONNX Runtime value with a fixed shape and dtype.

    On the host the buffer *is* a numpy array (the OrtValue wraps its memory), so
    `numpy()` returns a live view; on a GPU `numpy()` copies to the host.
    """

    __slots__ = ("ortvalue", "host", "device")

    def __init__(self, ortvalue: ort.OrtValue, host: np.ndarray | None, device: Device):
        self.ortvalue = ortvalue
        self.host = host
        self.device = device

    @classmethod
    def from_numpy(cls, array: np.ndarray, device: Device) -> Buffer:
        """On the host, wrap ``array`` itself (no copy); on a GPU, copy it there."""
        if device.is_host:
            array = np.require(array, requirements="C")
            return cls(ort.OrtValue.ortvalue_from_numpy(array), array, device)
        value = ort.OrtValue.ortvalue_from_numpy(np.require(array, requirements="C"), device.kind, device.index)
        return cls(value, None, device)

    @classmethod
    def zeros(cls, shape: tuple[int, ...], dtype: np.dtype, device: Device) -> Buffer:
        return cls.from_numpy(np.zeros(shape, dtype), device)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ortvalue.shape())

    def numpy(self) -> np.ndarray:
        return self.host if self.host is not None else self.ortvalue.numpy()

    def copy_from(self, array: np.ndarray) -> None:
        if self.host is not None:
            np.copyto(self.host, array)
        else:
            self.ortvalue.update_inplace(np.require(array, self.ortvalue.numpy().dtype, "C"))
