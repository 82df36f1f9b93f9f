"""Rules of normalizing operators: Softmax, LogSoftmax, BatchNormalization,
LayerNormalization and LRN."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import attribute, rule


@rule("Softmax")
def _softmax(node, grads, e):
    """``dx = y * (g - sum(g * y, axis))``."""
    (g,), y = grads, node.outputs[0]
    axes = e.ints([attribute(node, "axis", -1)])
    dot = e.op("ReduceSum", [e.op("Mul", [g, y]), axes], {"keepdims": 1})
    return [e.op("Mul", [y, e.op("Sub", [g, dot])])]


@rule("LogSoftmax")
def _log_softmax(node, grads, e):
    """``dx = g - exp(y) * sum(g, axis)``."""
    (g,), y = grads, node.outputs[0]
    total = e.op("ReduceSum", [g, e.ints([attribute(node, "axis", -1)])], {"keepdims": 1})
    return [e.op("Sub", [g, e.op("Mul", [e.op("Exp", [y]), total])])]


def _standardized(e: Emitter, x: ir.Value, axes: ir.Value, epsilon: float) -> tuple[ir.Value, ir.Value]:
    """``xhat = (x - mean) * invstd`` and ``invstd = 1 / sqrt(var + epsilon)`` over ``axes`` (kept)."""
    centered = e.op("Sub", [x, e.op("ReduceMean", [x, axes], {"keepdims": 1})])
    variance = e.op("ReduceMean", [e.op("Mul", [centered, centered]), axes], {"keepdims": 1})
    invstd = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [variance, e.scalar_like(epsilon, x)])])])
    return e.op("Mul", [centered, invstd]), invstd


def _through_standardization(e: Emitter, gxhat: ir.Value, xhat: ir.Value, invstd: ir.Value,
                             axes: ir.Value) -> ir.Value:
    """``dx = invstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))`` over ``axes``."""

    def mean(v):
        return e.op("ReduceMean", [v, axes], {"keepdims": 1})

    centered = e.op("Sub", [gxhat, mean(gxhat)])
    return e.op("Mul", [invstd, e.op("Sub", [centered, e.op("Mul", [xhat, mean(e.op("Mul", [gxhat, xhat]))])])])


@rule("BatchNormalization", partial=True)
def _batch_normalization(node, grads, e):
    """``y = scale * xhat + B`` per channel (axis 1), ``xhat = (x - mean) / sqrt(var + epsilon)``.

    Training mode (batch statistics over all axes but 1): ``dx`` through the
    standardization, ``dscale = sum(g * xhat)``, ``dB = sum(g)``. Inference mode (the
    running statistics are constants): ``dx = g * scale * invstd``. The running
    statistics get no gradient.
    """
    g = grads[0]
    x, scale = node.inputs[0], node.inputs[1]
    axes = e.axes(x, 2, leading=[0])

    def per_channel(v):  # [C] -> [1, C, 1, ...]
        return e.op("Unsqueeze", [v, axes])

    epsilon = attribute(node, "epsilon", 1e-5)
    if attribute(node, "training_mode", 0):
        xhat, invstd = _standardized(e, x, axes, epsilon)
        dx = _through_standardization(e, e.op("Mul", [g, per_channel(scale)]), xhat, invstd, axes)
    else:
        variance = e.op("Add", [per_channel(node.inputs[4]), e.scalar_like(epsilon, x)])
        invstd = e.op("Reciprocal", [e.op("Sqrt", [variance])])
        xhat = e.op("Mul", [e.op("Sub", [x, per_channel(node.inputs[3])]), invstd])
        dx = e.op("Mul", [g, e.op("Mul", [per_channel(scale), invstd])])
    dscale = e.op("ReduceSum", [e.op("Mul", [g, xhat]), axes], {"keepdims": 0})
    dbias = e.op("ReduceSum", [g, axes], {"keepdims": 0})
    return [dx, dscale, dbias, None, None]


@rule("LayerNormalization", partial=True)
def _layer_normalization(node, grads, e):
    """``y = scale * xhat + B``, ``xhat`` standardized over the axes from ``axis`` on:
    ``dx`` through the standardization of ``g * scale``, ``dscale = unb(g * xhat)``,
    ``dB = unb(g)``. The Mean and InvStdDev outputs must not reach the loss."""
    _only_first_output_reaches_loss(node, grads)
    g, (x, scale), y = grads[0], node.inputs[:2], node.outputs[0]
    axes = e.axes(x, int(attribute(node, "axis", -1)))
    xhat, invstd = _standardized(e, x, axes, attribute(node, "epsilon", 1e-5))
    dx = _through_standardization(e, e.op("Mul", [g, scale]), xhat, invstd, axes)
    result = [dx, e.unbroadcast(e.op("Mul", [g, xhat]), scale, y)]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        result.append(e.unbroadcast(g, node.inputs[2], y))
    return result


def _only_first_output_reaches_loss(node: ir.Node, grads: list) -> None:
    if any(grad is not None for grad in grads[1:]):
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: only its first output may reach the loss")


@rule("LRN")
def _lrn(node, grads, e):
    """``y = x * s ** -beta`` with ``s = bias + alpha / size * window(x * x)``, the window
    summing ``size`` neighbouring channels: ``dx = g * s ** -beta
    - 2 * alpha * beta / size * x * window'(g * x * s ** (-beta - 1))``, where
    ``window'`` sums the channels whose windows contain the channel (the transposed window)."""
    (g,), x = grads, node.inputs[0]
    size = int(attribute(node, "size"))
    alpha, beta = attribute(node, "alpha", 1e-4), attribute(node, "beta", 0.75)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sums = _channel_window_sum(e, e.op("Mul", [x, x]), x, size, before, after)
    s = e.op("Add", [e.scalar_like(attribute(node, "bias", 1.0), x),
                     e.op("Mul", [e.scalar_like(alpha / size, x), sums])])
    power = e.op("Pow", [s, e.scalar_like(-beta, x)])  # s ** -beta
    through = e.op("Div", [e.op("Mul", [e.op("Mul", [g, x]), power]), s])  # g * x * s ** (-beta - 1)
    spread = _channel_window_sum(e, through, x, size, after, before)
    correction = e.op("Mul", [e.scalar_like(2 * alpha * beta / size, x), e.op("Mul", [x, spread])])
    return [e.op("Sub", [e.op("Mul", [g, power]), correction])]


def _channel_window_sum(e: Emitter, v: ir.Value, x: ir.Value, size: int, before: int, after: int) -> ir.Value:
    """``sum(v[:, c - before : c + after + 1])`` for every channel ``c``, ``v`` shaped like ``x``:
    a Conv of ``v`` seen as [N, 1, C, rest]."""
    column = e.op("Unsqueeze", [e.op("Reshape", [v, e.op("Concat", [e.shape(v, 0, 2), e.ints([-1])], {"axis": 0})]),
                                e.ints([1])])
    ones = e.constant(np.ones((1, 1, size, 1), x.dtype.numpy()))
    return e.reshape_like(e.op("Conv", [column, ones], {"pads": [before, 0, after, 0]}), x)


@rule("InstanceNormalization")
def _instance_normalization(node, grads, e):
    """``y = scale * xhat + B`` per channel, ``xhat`` standardized over the spatial axes of each
    sample and channel: ``dx`` through the standardization of ``g * scale``,
    ``dscale = sum(g * xhat)``, ``dB = sum(g)`` over all but axis 1."""
    g, (x, scale, _) = grads[0], node.inputs
    spatial = e.axes(x, 2)
    per_channel = e.axes(x, 2, leading=[0])
    xhat, invstd = _standardized(e, x, spatial, attribute(node, "epsilon", 1e-5))
    dx = _through_standardization(e, e.op("Mul", [g, e.op("Unsqueeze", [scale, per_channel])]), xhat, invstd, spatial)
    dscale = e.op("ReduceSum", [e.op("Mul", [g, xhat]), per_channel], {"keepdims": 0})
    return [dx, dscale, e.op("ReduceSum", [g, per_channel], {"keepdims": 0})]
