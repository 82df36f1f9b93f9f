"""`NodeBuilder`: the standard ``ai.onnx`` nodes that replace one preview node, with fresh names.

Scalars (a learning rate, a bias correction) are computed once per node in float64 and cast to
each tensor's dtype (``CastLike``), so one node may update float and double tensors alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOUBLE = onnx.TensorProto.DOUBLE


class NodeBuilder:
    """Collects the nodes built for one preview node; names not in ``taken`` (which it extends)."""

    def __init__(self, taken: set[str], prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self._taken = taken
        self._prefix = prefix
        self._count = 0
        self._memo: dict[tuple, str] = {}

    def fresh(self) -> str:
        while True:
            name = f"{self._prefix}/{self._count}"
            self._count += 1
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, *inputs: str, out: str = "", **attributes: Any) -> str:
        """One node of ``op_type``; its output, named ``out`` if given."""
        output = out or self.fresh()
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=f"{self._prefix}/{output}",
                                           **attributes))
        return output

    def constant(self, value: Any, dtype: Any = np.float64) -> str:
        """A 0-d constant (a float64 one by default), built once per value."""
        array = np.asarray(value, dtype)
        key = ("constant", array.dtype.str, array.shape, array.tobytes())
        if key not in self._memo:
            self._memo[key] = self.op("Constant", value=numpy_helper.from_array(array))
        return self._memo[key]

    def scalar(self, name: str) -> str:
        """The 0-d form of a one-element input (``R``, ``T``)."""
        return self.op("Reshape", name, self.constant(np.zeros(0, np.int64), np.int64))

    def double(self, name: str) -> str:
        return self.op("Cast", name, to=DOUBLE)

    def like(self, scalar: str | float, x: str) -> str:
        """``scalar`` (a float64 value's name, or a Python float) in ``x``'s dtype, built once per pair."""
        source = self.constant(scalar) if isinstance(scalar, float) else scalar
        key = ("like", source, x)
        if key not in self._memo:
            self._memo[key] = self.op("CastLike", source, x)
        return self._memo[key]
