"""Functions over `Sym` beyond the arithmetic operators; each emits standard ONNX ops."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.symbolic.errors import build_error
from graphopt.symbolic.graph import broadcast_shapes
from graphopt.symbolic.value import Sym


def _graph_of(*operands: Any):
    for x in operands:
        if isinstance(x, Sym):
            return x.graph
    raise build_error("operand", "at least one operand must be a Sym")


def sqrt(x: Sym) -> Sym:
    return x.graph.unary("Sqrt", x)


def sign(x: Sym) -> Sym:
    """``-1``, ``0`` or ``1`` elementwise, as ``x`` is negative, zero or positive (``Sign``)."""
    return x.graph.unary("Sign", x)


def maximum(a: Any, b: Any) -> Sym:
    return _graph_of(a, b).elementwise("Max", a, b)


def minimum(a: Any, b: Any) -> Sym:
    return _graph_of(a, b).elementwise("Min", a, b)


def where(condition: Sym, a: Any, b: Any) -> Sym:
    """``a`` where ``condition`` holds, else ``b`` (broadcasting all three)."""
    graph = _graph_of(condition, a, b)
    if condition.dtype != np.dtype(bool):
        raise build_error("Where", f"condition must be bool, got {condition!r}")
    (a, b), dtype, weak = graph.unify("Where", [a, b])
    shape = broadcast_shapes("Where", [condition.shape, a.shape, b.shape])
    target = graph._innermost("Where", [condition, a, b])  # noqa: SLF001 - a loop body's, if one operand is in it
    return target.op("Where", [condition, a, b], dtype=dtype, shape=shape, weak=weak)


def isinf(x: Sym) -> Sym:
    """Whether each element of ``x`` is +inf or -inf (bool, ``x``'s shape)."""
    return x.graph.op("IsInf", [x], dtype=np.dtype(bool), shape=x.shape)


def cast(x: Sym, dtype: Any, *, weak: bool = False) -> Sym:
    """``x`` as ``dtype``; ``weak=True`` makes a scalar that yields to tensors' dtypes."""
    return x.graph.cast(x, dtype, weak=weak)


def sum_of_squares(x: Sym) -> Sym:
    """``sum(x ** 2)`` over every element, as a scalar of ``x``'s dtype."""
    return x.graph.op("ReduceSumSquare", [x], dtype=x.dtype, shape=(), attributes={"keepdims": 0})


def clip(x: Sym, low: Any, high: Any) -> Sym:
    """``min(max(x, low), high)`` with scalar bounds."""
    graph = x.graph
    (x, low, high), dtype, weak = graph.unify("Clip", [x, low, high])
    for name, bound in (("low", low), ("high", high)):
        if bound.shape != ():
            raise build_error("Clip", f"bound {name} must be a scalar, got shape {list(bound.shape)}")
    return graph.op("Clip", [x, low, high], dtype=dtype, shape=x.shape, weak=weak)


def _reduce_over(op_type: str, x: Sym, axis: int) -> Sym:
    """``op_type`` over one ``axis`` of ``x``, which is kept with size 1 (keepdims)."""
    if not -x.ndim <= axis < x.ndim:
        raise build_error(op_type, f"axis {axis} is out of range for {x!r}")
    shape = list(x.shape)
    shape[axis] = 1
    axes = x.graph.constant(np.array([axis], np.int64), np.int64, weak=False)
    return x.graph.op(op_type, [x, axes], dtype=x.dtype, shape=tuple(shape), attributes={"keepdims": 1})


def sum_of_squares_over(x: Sym, axis: int) -> Sym:
    """``sum(x ** 2)`` over one ``axis``, kept with size 1."""
    return _reduce_over("ReduceSumSquare", x, axis)


def mean_over(x: Sym, axis: int) -> Sym:
    """The mean of ``x`` over one ``axis``, kept with size 1."""
    return _reduce_over("ReduceMean", x, axis)


def matmul(a: Sym, b: Sym) -> Sym:
    """``a @ b`` for tensors of rank >= 2 and one dtype, batch dimensions broadcasting (numpy's matmul)."""
    graph = _graph_of(a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise build_error("MatMul", f"operands must be 2-D matrices or stacks of them (rank >= 2), got {a!r} and {b!r}")
    if a.dtype != b.dtype or a.weak or b.weak:
        raise build_error("MatMul", f"operands have different dtypes ({a!r}, {b!r}); cast one explicitly")
    if a.shape[-1] is not None and b.shape[-2] is not None and a.shape[-1] != b.shape[-2]:
        raise build_error("MatMul", f"inner dimensions differ: {list(a.shape)} @ {list(b.shape)}")
    batch = broadcast_shapes("MatMul", [a.shape[:-2], b.shape[:-2]])
    target = graph._innermost("MatMul", [a, b])  # noqa: SLF001 - the node goes where its operands live
    return target.op("MatMul", [a, b], dtype=a.dtype, shape=(*batch, a.shape[-2], b.shape[-1]))


def transpose(x: Sym) -> Sym:
    """The transpose of a 2-D tensor (ONNX ``Transpose`` with ``perm = [1, 0]``)."""
    if x.ndim != 2:
        raise build_error("Transpose", f"operand must be a 2-D matrix, got {x!r}")
    return x.graph.op("Transpose", [x], dtype=x.dtype, shape=(x.shape[1], x.shape[0]), attributes={"perm": [1, 0]})
