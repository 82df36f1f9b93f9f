"""Rules of the Reduce* operators and CumSum: ``g`` is the gradient of the output ``y``,
``expand(g)`` is ``g`` broadcast back to the input's shape (the reduced axes, constant or
computed at run time, kept as size 1 first)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import attribute, folded_input, rule


def _axes_input(node: ir.Node) -> ir.Value | None:
    return node.inputs[1] if len(node.inputs) > 1 else None


def _written_axes(node: ir.Node) -> list[int] | None:
    """The axes as the node gives them (maybe negative; ``[]``: all, or none with ``noop_with_empty_axes``),
    from its input (opset 18) or attribute; None if they are computed at run time."""
    if _axes_input(node) is not None:
        axes = folded_input(node, 1)
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return [int(a) for a in attribute(node, "axes", [])]


def _axes_value(node: ir.Node, e: Emitter) -> list[ir.Value]:
    """The node's axes as the optional input of another Reduce* node: ``[]`` or ``[axes]``."""
    if _axes_input(node) is not None:
        return [node.inputs[1]]
    written = _written_axes(node)
    return [e.ints(written)] if written else []


def _keep_reduced(node: ir.Node, v: ir.Value, e: Emitter) -> ir.Value:
    """``v`` (shaped like the reduction's output) with the reduced axes kept as size 1.

    A reduction over all axes without ``keepdims`` gives a scalar, which broadcasts as it is,
    and a no-op one (``noop_with_empty_axes``) gives ``x``'s shape: both are returned as they are.
    Unsqueeze reads negative axes against its output's rank, which is ``x``'s, as the reduction did."""
    if attribute(node, "keepdims", 1):
        return v
    axes = _written_axes(node)
    if axes == []:
        return v
    if axes is None:
        return e.op("Reshape", [v, _kept_shape(node, e)])
    return e.op("Unsqueeze", [v, e.ints(axes)])


def _kept_shape(node: ir.Node, e: Emitter) -> ir.Value:
    """``x``'s shape with ones on the reduced axes, for axes only known at run time:
    ``shape(x)`` with ones scattered at ``axes`` (made non-negative); all ones where ``axes`` is
    empty, unless ``noop_with_empty_axes``."""
    shape = e.shape(node.inputs[0])
    rank = e.length(shape)
    axes = e.op("Reshape", [e.op("Cast", [node.inputs[1]], {"to": ir.DataType.INT64}), e.ints([-1])])
    axes = e.op("Where", [e.op("Less", [axes, e.constant(np.int64(0))]), e.op("Add", [axes, rank]), axes])
    # ones like axes, and their count, computed elementwise: ONNX Runtime can infer a wrong static
    # shape for axes made by Range from Size, which a Shape or Size of them would be folded to
    ones = e.op("Add", [e.op("Sub", [axes, axes]), e.constant(np.int64(1))])
    kept = e.op("ScatterElements", [shape, axes, ones])
    if attribute(node, "noop_with_empty_axes", 0):
        return kept
    all_ones = e.op("ConstantOfShape", [e.shape(shape)], {"value": ir.tensor(np.ones(1, np.int64))})
    count = e.op("ReduceSum", [ones], {"keepdims": 0})
    return e.op("Where", [e.op("Equal", [count, e.constant(np.int64(0))]), all_ones, kept])


def _expand_reduced(node: ir.Node, g: ir.Value, e: Emitter) -> ir.Value:
    """``g`` of a reduction, broadcast back to the input's shape."""
    return e.op("Expand", [_keep_reduced(node, g, e), e.shape(node.inputs[0])])


@rule("ReduceSum")
def _reduce_sum(node, grads, e):
    """``dx = expand(g)`` to the input's shape."""
    return [_expand_reduced(node, grads[0], e)] + [None] * (len(node.inputs) - 1)


@rule("ReduceMean")
def _reduce_mean(node, grads, e):
    """``dx = expand(g) * size(y) / size(x)``."""
    x, y = node.inputs[0], node.outputs[0]

    def size(v):
        return e.cast_like(e.op("ReduceProd", [e.shape(v)], {"keepdims": 0}), x)

    scale = e.op("Div", [size(y), size(x)])
    return [e.op("Mul", [_expand_reduced(node, grads[0], e), scale])] + [None] * (len(node.inputs) - 1)


@rule("ReduceMax", "ReduceMin")
def _reduce_max(node, grads, e):
    """``dx = expand(g) * m / sum(m)`` with ``m = (x == y)``: ties share the gradient equally (Max and Min)."""
    x, y = node.inputs[0], node.outputs[0]
    hits = e.op("CastLike", [e.op("Equal", [x, _keep_reduced(node, y, e)]), x])
    count = e.op("ReduceSum", [hits, *_axes_value(node, e)],
                 {"keepdims": 1, "noop_with_empty_axes": attribute(node, "noop_with_empty_axes", 0)})
    return [e.op("Mul", [_expand_reduced(node, grads[0], e), e.op("Div", [hits, count])])] + \
        [None] * (len(node.inputs) - 1)


@rule("ReduceSumSquare")
def _reduce_sum_square(node, grads, e):
    """``dx = 2 * x * expand(g)``."""
    x = node.inputs[0]
    twice = e.op("Mul", [x, e.scalar_like(2.0, x)])
    return [e.op("Mul", [twice, _expand_reduced(node, grads[0], e)])] + [None] * (len(node.inputs) - 1)


@rule("ReduceL2")
def _reduce_l2(node, grads, e):
    """``y = sqrt(sum(x^2))``: ``dx = x * expand(g / y)`` (0 where ``y = 0``)."""
    x, y = node.inputs[0], node.outputs[0]
    safe = e.op("Where", [e.op("Equal", [y, e.scalar_like(0.0, x)]), e.scalar_like(1.0, x), y])
    return [e.op("Mul", [x, _expand_reduced(node, e.op("Div", [grads[0], safe]), e)])] + \
        [None] * (len(node.inputs) - 1)


@rule("ReduceLogSumExp")
def _reduce_log_sum_exp(node, grads, e):
    """``dx = expand(g) * exp(x - y)``, the softmax over the reduced axes."""
    x, y = node.inputs[0], node.outputs[0]
    weights = e.op("Exp", [e.op("Sub", [x, _keep_reduced(node, y, e)])])
    return [e.op("Mul", [_expand_reduced(node, grads[0], e), weights])] + [None] * (len(node.inputs) - 1)


@rule("ReduceL1")
def _reduce_l1(node, grads, e):
    """``dx = sign(x) * expand(g)``."""
    return [e.op("Mul", [e.op("Sign", [node.inputs[0]]), _expand_reduced(node, grads[0], e)])] + \
        [None] * (len(node.inputs) - 1)


@rule("ReduceLogSum")
def _reduce_log_sum(node, grads, e):
    """``y = log(sum(x))``: ``dx = expand(g / exp(y))``."""
    return [_expand_reduced(node, e.op("Div", [grads[0], e.op("Exp", [node.outputs[0]])]), e)] + \
        [None] * (len(node.inputs) - 1)


@rule("CumSum")
def _cum_sum(node, grads, e):
    """``y_i = sum of x_j for j <= i`` (``j < i`` if exclusive; ``j >= i`` / ``j > i`` if reverse)
    along ``axis``: ``dx_j = sum of g_i over the i whose sum holds x_j``, the running sum of ``g``
    the other way, ``dx = CumSum(g, axis, exclusive, reverse = not reverse)``. The axis may be
    computed at run time: the same input is read."""
    x, axis = node.inputs
    attrs = {"exclusive": attribute(node, "exclusive", 0), "reverse": 1 - attribute(node, "reverse", 0)}
    return [e.op("CumSum", [grads[0], axis], attrs), None]
