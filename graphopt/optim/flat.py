"""`FlatGroup`: the tensors of one param group (one dtype) in flat buffers of whole rows.

Parameters, gradients, gradient sums and every state slot of the group are each one
contiguous buffer of ``rows * row`` elements; each tensor is a view at a fixed offset.
The padding after the last tensor is zero and stays finite under every update
graphopt emits (it sees zero gradients). ``rows(buffer)`` gives the ``[rows, 1, row]``
view the chunked update runs on.

Parameters, gradients and gradient sums are numpy arrays (the facade's); state slots
are allocated by the runtime: numpy arrays, or device `Buffer` s that stay on a GPU.
Every slot buffer holds the state's true values between steps (the updates write moving
averages literally, see `graphopt.update.chunked`), so reading state never changes a later step.

Two kinds of state live beside the flat buffers, per tensor: ``scalar_slots[name][i]``, tensor
``i``'s value of a per-tensor scalar (a Python float, as ``steps[i]`` is an int; NAdam's
``mu_product``), and ``shaped_slots[i][name]``, a host array of whatever shape the transform
declares for tensor ``i`` (Adafactor's ``row_var``). Groups whose chains have shaped slots run
per tensor only, so those arrays are never viewed as rows.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from graphopt.parameter import Parameter
from graphopt.runtime import Buffer, Region

Storage = np.ndarray | Buffer  # a flat state buffer: numpy on the host, or memory ONNX Runtime owns


def row_length(total: int, chunk: int) -> int:
    """Elements per row: ``chunk``, or the group's size rounded up to 16 if that is smaller."""
    return min(chunk, max(16, -(-total // 16) * 16))


class FlatGroup:
    """Flat buffers of ``params`` (all of one dtype), which this group adopts."""

    def __init__(self, params: list[Parameter], chunk: int, owner: object,
                 allocate: Callable[[int, np.dtype], Storage] = np.zeros):
        self.params = params
        self.dtype = params[0].dtype
        self.offsets = np.cumsum([0] + [p.size for p in params]).tolist()
        total = self.offsets[-1]
        self.row = row_length(total, chunk)
        self.num_rows = max(1, -(-total // self.row))
        self.data = np.zeros(self.num_rows * self.row, self.dtype)
        self.grads = np.zeros_like(self.data)
        self.sums: np.ndarray | None = None
        self.slots: dict[str, Storage] = {}
        self._allocate = allocate
        self.steps = [0] * len(params)
        self.scalar_slots: dict[str, list[float]] = {}  # per-tensor scalar state, by slot name
        self.shaped_slots: list[dict[str, np.ndarray]] = [{} for _ in params]  # per tensor, by slot name
        self.scalars: dict[str, np.ndarray] = {}  # bound 0-d inputs of the chunked update, by name
        self.runners: dict[tuple, tuple] = {}  # the chunked update's bindings to these buffers
        for i, p in enumerate(params):
            p._adopt(self.view(self.data, i), self.view(self.grads, i), owner)  # noqa: SLF001

    def view(self, buffer: Storage, i: int) -> np.ndarray | Region:
        """Tensor ``i``'s part of a flat ``buffer``, in its shape."""
        shape = self.params[i].shape
        if isinstance(buffer, Buffer):
            return buffer.region(self.offsets[i], shape)
        return buffer[self.offsets[i]:self.offsets[i + 1]].reshape(shape)

    def rows(self, buffer: Storage) -> np.ndarray | Region:
        """The ``[rows, 1, row]`` view of a flat ``buffer`` that the chunked update runs on."""
        shape = (self.num_rows, 1, self.row)
        return buffer.region(0, shape) if isinstance(buffer, Buffer) else buffer.reshape(shape)

    def slot(self, name: str) -> Storage:
        """State slot ``name``'s flat buffer, created as zeros on first use."""
        if name not in self.slots:
            self.slots[name] = self._allocate(self.data.size, self.dtype)
        return self.slots[name]

    def read_slot(self, name: str) -> np.ndarray:
        """Slot ``name``'s values on the host: the live buffer, or a copy of a device one."""
        buffer = self.slots[name]
        return buffer.numpy() if isinstance(buffer, Buffer) else buffer

    def write_slot(self, name: str, values: Mapping[int, np.ndarray]) -> None:
        """Set tensor ``i``'s part of slot ``name`` to ``values[i]`` (zeros for the others)."""
        buffer = self.slot(name)
        host = np.zeros_like(self.data) if isinstance(buffer, Buffer) else buffer
        for i in range(len(self.params)):
            self.view(host, i)[...] = values[i] if i in values else 0
        if isinstance(buffer, Buffer):
            buffer.write(host)

    def sum_buffer(self) -> np.ndarray:
        if self.sums is None:
            self.sums = np.zeros_like(self.data)
        return self.sums
