"""Rules of the loss operators SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss.

For scores ``x`` of shape [N, C, d...] and integer targets ``t`` of shape [N, d...],
sample ``i`` with target ``c = t_i`` has weight ``w_i = weight[c]`` (1 without
weights; 0 where ``c`` is ``ignore_index``) and loss ``-w_i * x[i, c]``. The
reduction is ``none``, ``sum``, or ``mean`` (the sum divided by ``sum(w_i)``; where
``w_i = 0`` the gradient is 0, so a batch with every target ignored has a zero gradient, as
in torch, though its mean loss is NaN).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import attribute, known_rank, rule


@rule("NegativeLogLikelihoodLoss")
def _negative_log_likelihood(node, grads, e):
    """``dx[i, c] = -coef_i`` at ``c = t_i`` and 0 elsewhere: ``coef_i = g * w_i``
    (``g_i * w_i`` for reduction ``none``), divided by ``sum(w)`` for ``mean``."""
    x, target = node.inputs[0], node.inputs[1]
    weight = node.inputs[2] if len(node.inputs) > 2 else None
    return [_log_probability_grad(node, grads[0], x, target, weight, e), None, None][:len(node.inputs)]


@rule("SoftmaxCrossEntropyLoss", partial=True)
def _softmax_cross_entropy(node, grads, e):
    """The loss is the NLL of ``lp = log_softmax(x, axis=1)``: ``dlp`` as in
    NegativeLogLikelihoodLoss (plus the gradient of the ``log_prob`` output, if it has
    one), then ``dx = dlp - exp(lp) * sum(dlp, axis=1)``."""
    x, target = node.inputs[0], node.inputs[1]
    weight = node.inputs[2] if len(node.inputs) > 2 else None
    log_prob = node.outputs[1] if len(node.outputs) > 1 else e.op("LogSoftmax", [x], {"axis": 1})
    dlp = _log_probability_grad(node, grads[0], x, target, weight, e) if grads[0] is not None else None
    if len(grads) > 1 and grads[1] is not None:
        dlp = grads[1] if dlp is None else e.op("Add", [dlp, grads[1]])
    total = e.op("ReduceSum", [dlp, e.ints([1])], {"keepdims": 1})
    dx = e.op("Sub", [dlp, e.op("Mul", [e.op("Exp", [log_prob]), total])])
    return [dx, None, None][:len(node.inputs)]


def _log_probability_grad(node: ir.Node, g: ir.Value, x: ir.Value, target: ir.Value, weight: ir.Value | None,
                          e: Emitter) -> ir.Value:
    """The gradient of the NLL loss with respect to the log-probabilities ``x``."""
    reduction = attribute(node, "reduction", "mean")
    target = e.op("Cast", [target], {"to": ir.DataType.INT64})
    ignore_index = attribute(node, "ignore_index")
    valid = None
    if ignore_index is not None:
        valid = e.op("Not", [e.op("Equal", [target, e.ints([ignore_index])])])
        target = e.op("Where", [valid, target, e.ints([0])])
    w = e.op("Gather", [weight, target]) if weight is not None else None
    if valid is not None:
        w = e.cast_like(valid, x) if w is None else e.op("Mul", [w, e.cast_like(valid, x)])
    coef = g
    if reduction == "mean":
        total = e.cast_like(e.op("ReduceProd", [e.shape(target)], {"keepdims": 0}), x) if w is None else \
            e.op("ReduceSum", [w], {"keepdims": 0})
        coef = e.op("Div", [g, total])
    if w is not None:
        coef = e.op("Mul", [coef, w])
        if reduction == "mean":  # every weight 0 (all ignored): 0 / 0, and torch's gradient is 0
            zero = e.scalar_like(0.0, x)
            coef = e.op("Where", [e.op("Equal", [w, zero]), zero, coef])
    if reduction == "none" or w is not None:
        coef = e.op("Unsqueeze", [coef, e.ints([1])])
    rank = known_rank(x, node, "scores")
    depth = e.op("Squeeze", [e.shape(x, 1, 2)])
    classes = e.op("Range", [e.constant(np.int64(0)), depth, e.constant(np.int64(1))])
    classes = e.op("Reshape", [classes, e.ints([1, -1] + [1] * (rank - 2))])
    one_hot = e.cast_like(e.op("Equal", [e.op("Unsqueeze", [target, e.ints([1])]), classes]), x)
    return e.op("Neg", [e.op("Mul", [one_hot, coef])])
