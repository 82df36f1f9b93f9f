"""Rules of the Reduce* operators and CumSum (a running sum): ``g`` is the gradient of the output ``y``."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import attribute, constant_input, rule


def _reduced_axes(node: ir.Node) -> list[int] | None:
    """The axes a Reduce* node reduces (None: all), from its input (opset 18) or attribute."""
    if len(node.inputs) > 1 and node.inputs[1] is not None and constant_input(node, 1) is None:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: axes computed at run time are not supported")
    axes = constant_input(node, 1)
    if axes is None:
        axes = attribute(node, "axes")
    if axes is None or len(axes) == 0:
        return None
    rank = len(node.inputs[0].shape)
    return sorted(int(a) % rank for a in axes)


def _keep_reduced(node: ir.Node, v: ir.Value, e: Emitter) -> ir.Value:
    """``v`` (shaped like the reduction's output) with the reduced axes kept as size 1."""
    if attribute(node, "keepdims", 1):
        return v
    axes = _reduced_axes(node)
    return e.op("Unsqueeze", [v, e.ints(list(range(len(node.inputs[0].shape))) if axes is None else axes)])


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


@rule("ReduceMax")
def _reduce_max(node, grads, e):
    """``dx = expand(g) * m / sum(m)`` with ``m = (x == y)``: ties share the gradient equally."""
    x, y = node.inputs[0], node.outputs[0]
    hits = e.op("CastLike", [e.op("Equal", [x, _keep_reduced(node, y, e)]), x])
    axes = _reduced_axes(node)
    count = e.op("ReduceSum", [hits] if axes is None else [hits, e.ints(axes)], {"keepdims": 1})
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


@rule("CumSum")
def _cum_sum(node, grads, e):
    """``y_i = sum of x_j for j <= i`` (``j < i`` if exclusive; ``j >= i`` / ``j > i`` if reverse)
    along ``axis``: ``dx_j = sum of g_i over the i whose sum holds x_j``, the running sum of ``g``
    the other way, ``dx = CumSum(g, axis, exclusive, reverse = not reverse)``. The axis may be
    computed at run time: the same input is read."""
    x, axis = node.inputs
    attrs = {"exclusive": attribute(node, "exclusive", 0), "reverse": 1 - attribute(node, "reverse", 0)}
    return [e.op("CumSum", [grads[0], axis], attrs), None]
