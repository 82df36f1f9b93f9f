"""`Sym`: a symbolic tensor in a graph being built, with operators that emit ONNX nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from graphopt.symbolic.graph import Graph

Shape = tuple  # of int (or None for a dimension unknown at build time)


class Sym:
    """A value of a graph under construction: its ONNX value, dtype and static shape.

    A *weak* value is a scalar whose dtype yields to the other operand, as a Python
    float does in numpy: hyperparameters are float64 weak scalars, so ``lr * g`` with
    a float32 ``g`` casts ``lr`` (once) and computes in float32, while scalar-only
    arithmetic such as ``1 - beta1 ** t`` stays in float64.
    """

    __slots__ = ("graph", "value", "dtype", "shape", "weak", "scaled", "positive")
    __array_priority__ = 1000  # numpy scalars on the left defer to Sym's reflected operators

    def __init__(self, graph: Graph, value: ir.Value, dtype: np.dtype, shape: Shape, weak: bool = False):
        self.graph = graph
        self.value = value
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.weak = weak
        self.scaled: tuple[Sym, Sym] | None = None  # (s, x) when this is s * x, s a weak scalar, x a tensor
        self.positive = False  # known > 0 at build time (weak scalars only), which licenses more folding

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        kind = "weak " if self.weak else ""
        return f"Sym({self.value.name or '?'}: {kind}{self.dtype}{list(self.shape)})"

    def __add__(self, other):
        return self.graph.elementwise("Add", self, other)

    def __radd__(self, other):
        return self.graph.elementwise("Add", other, self)

    def __sub__(self, other):
        return self.graph.elementwise("Sub", self, other)

    def __rsub__(self, other):
        return self.graph.elementwise("Sub", other, self)

    def __mul__(self, other):
        return self.graph.elementwise("Mul", self, other)

    def __rmul__(self, other):
        return self.graph.elementwise("Mul", other, self)

    def __truediv__(self, other):
        return self.graph.elementwise("Div", self, other)

    def __rtruediv__(self, other):
        return self.graph.elementwise("Div", other, self)

    def __pow__(self, other):
        return self.graph.elementwise("Pow", self, other)

    def __rpow__(self, other):
        return self.graph.elementwise("Pow", other, self)

    def __neg__(self):
        return self.graph.unary("Neg", self)

    def __abs__(self):
        return self.graph.unary("Abs", self)

    def __gt__(self, other):
        return self.graph.elementwise("Greater", self, other, result_dtype=np.dtype(bool))

    def __lt__(self, other):
        return self.graph.elementwise("Less", self, other, result_dtype=np.dtype(bool))

    def __ge__(self, other):
        return self.graph.elementwise("GreaterOrEqual", self, other, result_dtype=np.dtype(bool))

    def __le__(self, other):
        return self.graph.elementwise("LessOrEqual", self, other, result_dtype=np.dtype(bool))

    __hash__ = object.__hash__  # comparisons build nodes, so identity hashing is kept explicitly
