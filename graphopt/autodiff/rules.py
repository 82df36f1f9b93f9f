"""Vector-Jacobian rules, one per ONNX operator, each emitting standard ``ai.onnx`` ops.

A rule receives the forward node, the gradient of each of its outputs (None where an
output does not reach the loss) and the `Emitter`; it returns one gradient per input
(None for inputs that are not differentiable, such as shapes and axes). In the
docstrings ``g`` is the gradient of the output ``y`` and ``unb`` sums a gradient back
over the axes its input was broadcast along.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter

Rule = Callable[[ir.Node, list, Emitter], list]
RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
        return fn
    return register


def attribute(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def constant_input(node: ir.Node, index: int) -> np.ndarray | None:
    """The value of input ``index`` if it is an initializer or a Constant node's output."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    value = node.inputs[index]
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


# -- elementwise arithmetic -------------------------------------------------------


@rule("Add")
def _add(node, grads, e):
    """``da = unb(g)``, ``db = unb(g)``."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    return [e.unbroadcast(g, a, y), e.unbroadcast(g, b, y)]


@rule("Sub")
def _sub(node, grads, e):
    """``da = unb(g)``, ``db = -unb(g)``."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    return [e.unbroadcast(g, a, y), e.unbroadcast(e.op("Neg", [g]), b, y)]


@rule("Mul")
def _mul(node, grads, e):
    """``da = unb(g * b)``, ``db = unb(g * a)``."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    return [e.unbroadcast(e.op("Mul", [g, b]), a, y), e.unbroadcast(e.op("Mul", [g, a]), b, y)]


@rule("Div")
def _div(node, grads, e):
    """``da = unb(g / b)``, ``db = -unb(g * y / b)``."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    ga = e.op("Div", [g, b])
    return [e.unbroadcast(ga, a, y), e.unbroadcast(e.op("Neg", [e.op("Mul", [ga, y])]), b, y)]


@rule("Sum")
def _sum(node, grads, e):
    """``dx_i = unb(g)`` for every input."""
    (g,), y = grads, node.outputs[0]
    return [e.unbroadcast(g, x, y) for x in node.inputs]


@rule("Neg")
def _neg(node, grads, e):
    """``dx = -g``."""
    return [e.op("Neg", [grads[0]])]


@rule("Identity")
def _identity(node, grads, e):
    """``dx = g``."""
    return [grads[0]]


@rule("Pow")
def _pow(node, grads, e):
    """``da = unb(g * b * a ** (b - 1))``, ``db = unb(g * y * log(a))``."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    one = e.scalar_like(1.0, a)
    da = e.op("Mul", [g, e.op("Mul", [e.op("CastLike", [b, a]), e.op("Pow", [a, e.op("Sub", [b, one])])])])
    db = None
    if b.dtype == a.dtype and constant_input(node, 1) is None:
        db = e.unbroadcast(e.op("Mul", [g, e.op("Mul", [y, e.op("Log", [a])])]), b, y)
    return [e.unbroadcast(da, a, y), db]


# -- elementwise functions --------------------------------------------------------


@rule("Relu")
def _relu(node, grads, e):
    """``dx = g`` where ``x > 0``, else 0."""
    x = node.inputs[0]
    return [e.op("Where", [e.op("Greater", [x, e.scalar_like(0.0, x)]), grads[0], e.scalar_like(0.0, x)])]


@rule("LeakyRelu")
def _leaky_relu(node, grads, e):
    """``dx = g`` where ``x > 0``, else ``alpha * g``."""
    x, g = node.inputs[0], grads[0]
    alpha = e.scalar_like(attribute(node, "alpha", 0.01), x)
    return [e.op("Where", [e.op("Greater", [x, e.scalar_like(0.0, x)]), g, e.op("Mul", [g, alpha])])]


@rule("Tanh")
def _tanh(node, grads, e):
    """``dx = g * (1 - y * y)``."""
    y = node.outputs[0]
    return [e.op("Mul", [grads[0], e.op("Sub", [e.scalar_like(1.0, y), e.op("Mul", [y, y])])])]


@rule("Sigmoid")
def _sigmoid(node, grads, e):
    """``dx = g * y * (1 - y)``."""
    y = node.outputs[0]
    return [e.op("Mul", [grads[0], e.op("Mul", [y, e.op("Sub", [e.scalar_like(1.0, y), y])])])]


@rule("Exp")
def _exp(node, grads, e):
    """``dx = g * y``."""
    return [e.op("Mul", [grads[0], node.outputs[0]])]


@rule("Log")
def _log(node, grads, e):
    """``dx = g / x``."""
    return [e.op("Div", [grads[0], node.inputs[0]])]


@rule("Sqrt")
def _sqrt(node, grads, e):
    """``dx = g / (2 * y)``."""
    y = node.outputs[0]
    return [e.op("Div", [grads[0], e.op("Mul", [e.scalar_like(2.0, y), y])])]


@rule("Reciprocal")
def _reciprocal(node, grads, e):
    """``dx = -g * y * y``."""
    y = node.outputs[0]
    return [e.op("Neg", [e.op("Mul", [grads[0], e.op("Mul", [y, y])])])]


@rule("Abs")
def _abs(node, grads, e):
    """``dx = g * sign(x)``."""
    return [e.op("Mul", [grads[0], e.op("Sign", [node.inputs[0]])])]


@rule("Erf")
def _erf(node, grads, e):
    """``dx = g * 2 / sqrt(pi) * exp(-x * x)``."""
    x = node.inputs[0]
    slope = e.op("Mul", [e.scalar_like(2.0 / np.sqrt(np.pi), x), e.op("Exp", [e.op("Neg", [e.op("Mul", [x, x])])])])
    return [e.op("Mul", [grads[0], slope])]


@rule("Where")
def _where(node, grads, e):
    """``da = unb(g where c)``, ``db = unb(g where not c)``; the condition has none."""
    (g,), (c, a, b), y = grads, node.inputs, node.outputs[0]
    zero = e.scalar_like(0.0, g)
    return [None, e.unbroadcast(e.op("Where", [c, g, zero]), a, y), e.unbroadcast(e.op("Where", [c, zero, g]), b, y)]


@rule("Cast")
def _cast(node, grads, e):
    """``dx = cast(g, dtype of x)`` (for float inputs)."""
    x = node.inputs[0]
    return [e.op("CastLike", [grads[0], x]) if x.dtype.is_floating_point() else None]


# -- linear algebra ------------------------------------------------------------------


def _transpose_last(e: Emitter, x: ir.Value) -> ir.Value:
    rank = len(x.shape)
    return e.op("Transpose", [x], {"perm": list(range(rank - 2)) + [rank - 1, rank - 2]})


@rule("MatMul")
def _matmul(node, grads, e):
    """``da = unb(g @ b^T)``, ``db = unb(a^T @ g)`` (operands of rank >= 2)."""
    (g,), (a, b), y = grads, node.inputs, node.outputs[0]
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise NotImplementedError(f"MatMul node {node.name!r}: gradients of 1-D operands are not supported")
    da = e.op("MatMul", [g, _transpose_last(e, b)])
    db = e.op("MatMul", [_transpose_last(e, a), g])
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


# -- normalizing functions and reductions ------------------------------------------


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


def _reduced_axes(node: ir.Node) -> list[int] | None:
    """The axes a Reduce* node reduces (None: all), from its input (opset 18) or attribute."""
    axes = constant_input(node, 1)
    if axes is None:
        axes = attribute(node, "axes")
    if axes is None or len(axes) == 0:
        return None
    rank = len(node.inputs[0].shape)
    return sorted(int(a) % rank for a in axes)


def _expand_reduced(node: ir.Node, g: ir.Value, e: Emitter) -> ir.Value:
    """``g`` of a reduction, broadcast back to the input's shape."""
    x = node.inputs[0]
    if len(node.inputs) > 1 and node.inputs[1] is not None and constant_input(node, 1) is None:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: axes computed at run time are not supported")
    if not attribute(node, "keepdims", 1):
        axes = _reduced_axes(node)
        axes = list(range(len(x.shape))) if axes is None else axes
        g = e.op("Unsqueeze", [g, e.ints(axes)])
    return e.op("Expand", [g, e.shape(x)])


@rule("ReduceSum")
def _reduce_sum(node, grads, e):
    """``dx = expand(g)`` to the input's shape."""
    return [_expand_reduced(node, grads[0], e)] + [None] * (len(node.inputs) - 1)


@rule("ReduceMean")
def _reduce_mean(node, grads, e):
    """``dx = expand(g) * size(y) / size(x)``."""
    x, y = node.inputs[0], node.outputs[0]
    size = lambda v: e.op("CastLike", [e.op("ReduceProd", [e.shape(v)], {"keepdims": 0}), x])  # noqa: E731
    scale = e.op("Div", [size(y), size(x)])
    return [e.op("Mul", [_expand_reduced(node, grads[0], e), scale])] + [None] * (len(node.inputs) - 1)


# -- shapes ------------------------------------------------------------------------


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(node, grads, e):
    """``dx = reshape(g, shape of x)``."""
    return [e.reshape_like(grads[0], node.inputs[0])] + [None] * (len(node.inputs) - 1)


@rule("Transpose")
def _transpose(node, grads, e):
    """``dx = transpose(g, inverse of perm)``."""
    rank = len(node.inputs[0].shape)
    perm = attribute(node, "perm", list(range(rank))[::-1])
    return [e.op("Transpose", [grads[0]], {"perm": [int(i) for i in np.argsort(perm)]})]


def supported() -> list[str]:
    return sorted(RULES)
