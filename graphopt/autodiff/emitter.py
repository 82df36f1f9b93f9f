"""`Emitter`: appends backward nodes to an onnx-ir graph, with the helpers rules share."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir


class Emitter:
    """Builds nodes at the end of ``graph``; every value it creates gets a fresh name."""

    def __init__(self, graph: ir.Graph, prefix: str = "grad"):
        self.graph = graph
        taken = {v.name for v in graph.inputs} | set(graph.initializers)
        taken |= {v.name for node in graph for v in node.outputs}
        self._taken = taken
        self._counter = itertools.count()
        self._prefix = prefix
        self.created: set[ir.Node] = set()

    def _name(self) -> str:
        while True:
            name = f"{self._prefix}/{next(self._counter)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attributes: dict[str, Any] | None = None,
           num_outputs: int = 1) -> Any:
        """One node; its output (or outputs, if ``num_outputs`` > 1)."""
        node = ir.Node("", op_type, list(inputs), attributes=ir.convenience.convert_attributes(attributes or {}),
                       num_outputs=num_outputs)
        for value in node.outputs:
            value.name = self._name()
        self.graph.append(node)
        self.created.add(node)
        return node.outputs[0] if num_outputs == 1 else tuple(node.outputs)

    def constant(self, array: Any) -> ir.Value:
        return self.op("Constant", [], {"value": ir.tensor(np.asarray(array))})

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.constant(np.asarray(values, np.int64))

    def scalar_like(self, value: float, like: ir.Value) -> ir.Value:
        """A 0-d constant ``value`` of ``like``'s dtype."""
        return self.op("CastLike", [self.constant(np.array(value, np.float64)), like])

    def shape(self, x: ir.Value, start: int | None = None, end: int | None = None) -> ir.Value:
        """``x``'s shape at run time, or the dims ``start:end`` of it."""
        attributes = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        return self.op("Shape", [x], attributes)

    def zeros(self, shape: ir.Value, like: ir.Value) -> ir.Value:
        """Zeros of the run-time ``shape``, of ``like``'s dtype."""
        return self.op("ConstantOfShape", [shape], {"value": ir.tensor(np.zeros(1, like.dtype.numpy()))})

    def cast_like(self, x: ir.Value, like: ir.Value) -> ir.Value:
        return self.op("CastLike", [x, like])

    def reshape_like(self, g: ir.Value, x: ir.Value) -> ir.Value:
        return self.op("Reshape", [g, self.shape(x)])

    def length(self, v: ir.Value) -> ir.Value:
        """The length of the 1-D ``v`` at run time, a 0-d int64 (not Size: ONNX Runtime 1.32 infers
        a wrong shape for a Range whose limit is a Size)."""
        return self.op("Squeeze", [self.shape(v)])

    def rank(self, x: ir.Value) -> ir.Value:
        """``x``'s rank at run time, a 0-d int64."""
        return self.length(self.shape(x))

    def axes(self, x: ir.Value, start: int, leading: Sequence[int] = ()) -> ir.Value:
        """The axes ``[*leading, start, ..., rank - 1]`` of ``x`` (``start`` may count from the end):
        a constant where ``x``'s rank is known, else computed at run time."""
        if x.shape is not None:
            return self.ints([*leading, *range(start % len(x.shape) if start < 0 else start, len(x.shape))])
        rank = self.rank(x)
        first = self.op("Add", [rank, self.constant(np.int64(start))]) if start < 0 else self.constant(np.int64(start))
        tail = self.op("Range", [first, rank, self.constant(np.int64(1))])
        return self.op("Concat", [self.ints(leading), tail], {"axis": 0}) if leading else tail

    def unbroadcast(self, g: ir.Value, x: ir.Value, out: ir.Value) -> ir.Value:
        """``g`` (shaped like the broadcast result ``out``) summed back to ``x``'s shape.

        The axes come from the static shapes of ``x`` and ``out`` where those are known,
        else from ``x``'s and ``g``'s shapes at run time.
        """
        axes = broadcast_axes(x, out)
        if axes is None:
            g = self.op("ReduceSum", [g, self._runtime_broadcast_axes(x, g, out)],
                        {"keepdims": 1, "noop_with_empty_axes": 1})
        elif axes:
            g = self.op("ReduceSum", [g, self.ints(axes)], {"keepdims": 1})
        if axes != [] or len(out.shape) != len(x.shape):
            g = self.reshape_like(g, x)
        return g

    def _runtime_broadcast_axes(self, x: ir.Value, g: ir.Value, out: ir.Value) -> ir.Value:
        """Axes where ``x``'s runtime shape, left-padded with ones to ``g``'s rank, is 1 and ``g``'s is not
        (``out`` is a value shaped like ``g``, whose rank may be known)."""
        padded = self.shape(x)
        if x.shape is None or out.shape is None:
            count = self.op("Reshape", [self.op("Sub", [self.rank(g), self.rank(x)]), self.ints([1])])
            lead = self.op("ConstantOfShape", [count], {"value": ir.tensor(np.ones(1, np.int64))})
            padded = self.op("Concat", [lead, padded], {"axis": 0})
        elif len(out.shape) > len(x.shape):
            padded = self.op("Concat", [self.ints([1] * (len(out.shape) - len(x.shape))), padded], {"axis": 0})
        one = self.ints([1])
        mask = self.op("And", [self.op("Equal", [padded, one]),
                               self.op("Not", [self.op("Equal", [self.shape(g), one])])])
        return self.op("Reshape", [self.op("NonZero", [mask]), self.ints([-1])])


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) else None


def broadcast_axes(x: ir.Value, out: ir.Value) -> list[int] | None:
    """The axes of ``out`` along which ``x`` was broadcast, or None if its rank or dims are not known."""
    if x.shape is None or out.shape is None:
        return None
    lead = len(out.shape) - len(x.shape)
    axes = list(range(lead))
    for i, (sx, so) in enumerate(zip(x.shape, list(out.shape)[lead:])):
        dx, do = _dim(sx), _dim(so)
        if dx == 1 and do != 1:
            axes.append(lead + i)
        elif dx is None and do != 1 and not (sx.value is not None and sx == so):
            return None  # a dimension only known at run time (and not the same symbol as the output's)
    return axes
