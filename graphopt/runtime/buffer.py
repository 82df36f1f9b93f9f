"""Memory ONNX Runtime owns: a flat `Buffer` on the host or a GPU, and `Region` views of it.

State kept on a GPU between steps lives in `Buffer` s. A tensor's part of a flat
buffer, or a range of its rows, is a `Region`: a pointer, a shape and a dtype, which
an IOBinding binds without copying. `bind_input` / `bind_output` bind numpy arrays,
buffers and regions alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from graphopt.runtime.providers import Device


class Buffer:
    """``size`` elements of ``dtype`` allocated by ONNX Runtime on ``device`` (zeros)."""

    __slots__ = ("ortvalue", "device", "dtype", "size")

    def __init__(self, size: int, dtype: np.dtype, device: Device):
        self.device, self.dtype, self.size = device, np.dtype(dtype), int(size)
        self.ortvalue = ort.OrtValue.ortvalue_from_numpy(np.zeros(self.size, self.dtype), device.kind, device.index)

    def region(self, start: int, shape: tuple[int, ...]) -> Region:
        return Region(self, int(start), tuple(shape))

    def numpy(self) -> np.ndarray:
        """A host copy of the whole buffer."""
        return self.ortvalue.numpy()

    def write(self, array: np.ndarray) -> None:
        """Copy a host array of the same size into the buffer."""
        self.ortvalue.update_inplace(np.require(array, self.dtype, "C").reshape(self.size))


@dataclass(frozen=True)
class Region:
    """``prod(shape)`` contiguous elements of ``buffer`` from element ``start`` on."""

    buffer: Buffer
    start: int
    shape: tuple[int, ...]

    @property
    def pointer(self) -> int:
        return self.buffer.ortvalue.data_ptr() + self.start * self.buffer.dtype.itemsize

    def numpy(self) -> np.ndarray:
        """A host copy of the region."""
        size = int(np.prod(self.shape))
        return self.buffer.numpy()[self.start:self.start + size].reshape(self.shape)

    def __getitem__(self, rows: slice) -> Region:
        """Rows ``rows`` (a step-1 slice of the first axis)."""
        first, stop, _ = rows.indices(self.shape[0])
        per_row = int(np.prod(self.shape[1:]))
        return Region(self.buffer, self.start + first * per_row, (stop - first, *self.shape[1:]))

    def binding_args(self) -> tuple:
        """``(device kind, device id, dtype, shape, pointer)``, as IOBinding's raw binders take them."""
        device = self.buffer.device
        return device.kind, device.index, self.buffer.dtype, list(self.shape), self.pointer


def bind_input(binding: ort.IOBinding, name: str, value: np.ndarray | Buffer | Region) -> None:
    if isinstance(value, Region):
        binding.bind_input(name, *value.binding_args())
    elif isinstance(value, Buffer):
        binding.bind_ortvalue_input(name, value.ortvalue)
    else:
        binding.bind_cpu_input(name, np.require(value, requirements="C"))


def bind_output(binding: ort.IOBinding, name: str, value: np.ndarray | Buffer | Region) -> None:
    if isinstance(value, Region):
        binding.bind_output(name, *value.binding_args())
    elif isinstance(value, Buffer):
        binding.bind_ortvalue_output(name, value.ortvalue)
    else:
        if not value.flags.c_contiguous:
            raise ValueError(f"output {name!r}: the array to write into must be C-contiguous")
        binding.bind_output(name, "cpu", 0, value.dtype, list(value.shape), value.ctypes.data)
