"""Rules of the linear operators: MatMul, Gemm, Conv and ConvTranspose."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.geometry import Window, window
from graphopt.autodiff.rules.registry import attribute, known_rank, rule, static_dims


def _transpose_last(e: Emitter, x: ir.Value, rank: int) -> ir.Value:
    return e.op("Transpose", [x], {"perm": list(range(rank - 2)) + [rank - 1, rank - 2]})


@rule("MatMul")
def _matmul(node, grads, e):
    """``da = unb(g @ b^T)``, ``db = unb(a^T @ g)`` (operands of rank >= 2)."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    rank_a, rank_b = known_rank(a, node, "first operand"), known_rank(b, node, "second operand")
    known_rank(y, node, "output")
    if rank_a < 2 or rank_b < 2:
        raise NotImplementedError(f"MatMul node {node.name!r}: gradients of 1-D operands are not supported")
    da = e.op("MatMul", [g, _transpose_last(e, b, rank_b)])
    db = e.op("MatMul", [_transpose_last(e, a, rank_a), g])
    return [e.unbroadcast(da, a, _like_rank(y, a)), e.unbroadcast(db, b, _like_rank(y, b))]


def _like_rank(y: ir.Value, x: ir.Value) -> ir.Value:
    """A stand-in for the product's shape as seen from ``x`` (batch dims of y, matrix dims of x)."""
    stand_in = ir.Value(name=None, shape=ir.Shape([*list(y.shape)[:-2], *list(x.shape)[-2:]]),
                        type=ir.TensorType(x.dtype))
    return stand_in


@rule("Gemm")
def _gemm(node, grads, e):
    """``Y = alpha * A' @ B' + beta * C``: ``dA' = alpha * g @ B'^T``, ``dB' = alpha * A'^T @ g``
    (transposed back where ``transA``/``transB``), ``dC = unb(beta * g)``."""
    (g,), y = grads, node.outputs[0]
    a, b = node.inputs[0], node.inputs[1]
    alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
    trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
    ga = g if alpha == 1.0 else e.op("Mul", [g, e.scalar_like(alpha, g)])
    # dA' = ga @ B'^T; dA = dA'^T when transA. B'^T is b itself when transB, else b^T.
    da = e.op("Gemm", [b, ga], {"transA": trans_b, "transB": 1}) if trans_a else \
        e.op("Gemm", [ga, b], {"transB": 0 if trans_b else 1})
    db = e.op("Gemm", [ga, a], {"transA": 1, "transB": trans_a}) if trans_b else \
        e.op("Gemm", [a, ga], {"transA": 0 if trans_a else 1})
    result = [da, db]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = node.inputs[2]
        gc = g if beta == 1.0 else e.op("Mul", [g, e.scalar_like(beta, g)])
        result.append(e.unbroadcast(gc, c, y))
    return result


@rule("Conv")
def _conv(node, grads, e):
    """``Y = conv(X, W) + B`` with ``group`` groups:

    ``dX = conv_transpose(g, W)`` with the forward strides, pads, dilations and groups;
    ``dW = conv(X as [C/group, group * N, ...], g as [M, N, ...])`` with strides and
    dilations exchanged, cut to the kernel's size; ``dB = sum(g)`` over all but axis 1.
    """
    (g,), w = grads, node.inputs[1]
    kernel = static_dims(w, node, "weight")[2:]
    win = window(node, kernel)
    group = attribute(node, "group", 1)
    dx = e.op("ConvTranspose", [g, w], {**win.attributes(), "group": group, "output_padding": win.output_padding})
    result = [dx, _conv_weight_grad(node.inputs[0], g, w, win, group, node, e)]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        result.append(e.op("ReduceSum", [g, e.ints([0, *range(2, 2 + len(kernel))])], {"keepdims": 0}))
    return result


def _conv_weight_grad(x: ir.Value, g: ir.Value, w: ir.Value, win: Window, group: int, node: ir.Node,
                      e: Emitter) -> ir.Value:
    """The gradient of ``conv(x, w)`` (window ``win``) with respect to ``w``, given the output gradient ``g``."""
    spatial_axes = list(range(2, 2 + len(win.kernel)))
    channels_per_group = static_dims(w, node, "weight")[1]
    if group == 1:
        inputs = e.op("Transpose", [x], {"perm": [1, 0, *spatial_axes]})  # [C, N, ...]
    else:  # [N, G*Cg, ...] -> [Cg, G*N, ...]
        split = e.op("Reshape", [x, e.ints([0, group, channels_per_group, *win.spatial])])
        moved = e.op("Transpose", [split], {"perm": [2, 1, 0, *(a + 1 for a in spatial_axes)]})
        inputs = e.op("Reshape", [moved, e.ints([channels_per_group, -1, *win.spatial])])
    kernels = e.op("Transpose", [g], {"perm": [1, 0, *spatial_axes]})  # [M, N, ...]
    swapped = {"strides": win.dilations, "dilations": win.strides, "pads": win.pads, "group": group}
    full = e.op("Transpose", [e.op("Conv", [inputs, kernels], swapped)], {"perm": [1, 0, *spatial_axes]})
    reach = [(n + b + a - s * (o - 1) - 1) // d + 1 for n, b, a, s, d, o in
             zip(win.spatial, win.begins, win.ends, win.strides, win.dilations, win.outputs)]
    if reach == win.kernel:
        return full
    return e.op("Slice", [full, e.ints([0] * len(reach)), e.ints(win.kernel), e.ints(spatial_axes)])


@rule("ConvTranspose")
def _conv_transpose(node, grads, e):
    """``Y = conv_transpose(X, W) + B`` is the adjoint of ``conv(., W)`` (from Y's space to X's):
    ``dX = conv(g, W)`` with the same strides, pads, dilations and groups,
    ``dW = ``the weight gradient of that conv with input ``g`` and output gradient ``X``,
    ``dB = sum(g)`` over all but axis 1. ``output_shape`` and ``auto_pad`` raise."""
    (g,), x, w = grads, node.inputs[0], node.inputs[1]
    if "output_shape" in node.attributes or attribute(node, "auto_pad", "NOTSET") != "NOTSET":
        raise NotImplementedError(f"ConvTranspose node {node.name!r}: no gradient with output_shape or auto_pad; "
                                  f"give pads and output_padding")
    kernel = static_dims(w, node, "weight")[2:]
    spatial = static_dims(node.outputs[0], node, "output", start=2)
    rank = len(kernel)
    pads = list(attribute(node, "pads", [0] * 2 * rank))
    adjoint = Window(spatial, kernel, list(attribute(node, "strides", [1] * rank)),
                     list(attribute(node, "dilations", [1] * rank)), pads[:rank], pads[rank:])
    group = attribute(node, "group", 1)
    dx = e.op("Conv", [g, w], {**adjoint.attributes(), "group": group})
    result = [dx, _conv_weight_grad(g, x, w, adjoint, group, node, e)]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        result.append(e.op("ReduceSum", [g, e.ints([0, *range(2, 2 + rank)])], {"keepdims": 0}))
    return result
