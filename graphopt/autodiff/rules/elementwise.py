"""Rules of elementwise operators: ``g`` is the gradient of the output ``y``, ``unb`` sums a
gradient back over the axes its input was broadcast along."""

from __future__ import annotations

import numpy as np

from graphopt.autodiff.rules.registry import attribute, constant_input, rule


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


@rule("Elu")
def _elu(node, grads, e):
    """``dx = g`` where ``x > 0``, else ``g * (y + alpha)``."""
    (g,), x, y = grads, node.inputs[0], node.outputs[0]
    alpha = e.scalar_like(attribute(node, "alpha", 1.0), x)
    return [e.op("Where", [e.op("Greater", [x, e.scalar_like(0.0, x)]), g, e.op("Mul", [g, e.op("Add", [y, alpha])])])]


@rule("Clip")
def _clip(node, grads, e):
    """``dx = g`` where ``min <= x <= max``, else 0 (the bounds get no gradient)."""
    x, g = node.inputs[0], grads[0]
    bounds = [(op, node.inputs[i]) for i, op in ((1, "GreaterOrEqual"), (2, "LessOrEqual"))
              if i < len(node.inputs) and node.inputs[i] is not None]
    if not bounds:
        return [g]
    inside = [e.op(op, [x, bound]) for op, bound in bounds]
    inside = inside[0] if len(inside) == 1 else e.op("And", inside)
    return [e.op("Where", [inside, g, e.scalar_like(0.0, g)])] + [None] * (len(node.inputs) - 1)


@rule("Dropout")
def _dropout(node, grads, e):
    """``dx = g * mask / (1 - ratio)`` in training mode, ``dx = g`` otherwise.

    The mask is the node's second output, which `graphopt.autodiff.reverse` adds to
    Dropout nodes that may run in training mode.
    """
    x, g = node.inputs[0], grads[0]
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return [g]
    ratio = node.inputs[1] if node.inputs[1] is not None else e.scalar_like(0.5, x)
    keep = e.op("Sub", [e.scalar_like(1.0, x), e.cast_like(ratio, x)])
    scale = e.op("Where", [training, e.op("Reciprocal", [keep]), e.scalar_like(1.0, x)])
    kept = e.op("Mul", [g, e.cast_like(node.outputs[1], x)])
    return [e.op("Mul", [kept, scale]), None, None]


@rule("Sin")
def _sin(node, grads, e):
    """``dx = g * cos(x)``."""
    return [e.op("Mul", [grads[0], e.op("Cos", [node.inputs[0]])])]


@rule("Cos")
def _cos(node, grads, e):
    """``dx = -g * sin(x)``."""
    return [e.op("Neg", [e.op("Mul", [grads[0], e.op("Sin", [node.inputs[0]])])])]


@rule("Softplus")
def _softplus(node, grads, e):
    """``y = log(1 + exp(x))``: ``dx = g * sigmoid(x)``."""
    return [e.op("Mul", [grads[0], e.op("Sigmoid", [node.inputs[0]])])]


@rule("Selu")
def _selu(node, grads, e):
    """``y = gamma * x`` for ``x > 0``, else ``gamma * alpha * (exp(x) - 1)``: ``dx = g * gamma``
    where ``x > 0``, else ``g * (y + gamma * alpha)``."""
    (g,), x, y = grads, node.inputs[0], node.outputs[0]
    alpha = attribute(node, "alpha", 1.67326319217681884765625)
    gamma = attribute(node, "gamma", 1.05070102214813232421875)
    below = e.op("Mul", [g, e.op("Add", [y, e.scalar_like(gamma * alpha, x)])])
    return [e.op("Where", [e.op("Greater", [x, e.scalar_like(0.0, x)]), e.op("Mul", [g, e.scalar_like(gamma, x)]),
                           below])]


@rule("HardSigmoid")
def _hard_sigmoid(node, grads, e):
    """``y = clip(alpha * x + beta, 0, 1)``: ``dx = g * alpha`` where ``0 < alpha * x + beta < 1``."""
    (g,), x = grads, node.inputs[0]
    alpha, beta = attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)
    inner = e.op("Add", [e.op("Mul", [x, e.scalar_like(alpha, x)]), e.scalar_like(beta, x)])
    inside = e.op("And", [e.op("Greater", [inner, e.scalar_like(0.0, x)]),
                          e.op("Less", [inner, e.scalar_like(1.0, x)])])
    return [e.op("Where", [inside, e.op("Mul", [g, e.scalar_like(alpha, x)]), e.scalar_like(0.0, x)])]


@rule("HardSwish")
def _hard_swish(node, grads, e):
    """``y = x * clip(x / 6 + 1 / 2, 0, 1)``: ``dx = g * (x / 3 + 1 / 2)`` for ``-3 < x < 3``,
    ``g`` above, 0 below."""
    (g,), x = grads, node.inputs[0]
    slope = e.op("Add", [e.op("Div", [x, e.scalar_like(3.0, x)]), e.scalar_like(0.5, x)])
    slope = e.op("Where", [e.op("Greater", [x, e.scalar_like(3.0, x)]), e.scalar_like(1.0, x), slope])
    slope = e.op("Where", [e.op("Less", [x, e.scalar_like(-3.0, x)]), e.scalar_like(0.0, x), slope])
    return [e.op("Mul", [g, slope])]


@rule("Gelu")
def _gelu(node, grads, e):
    """``approximate="none"``: ``y = x * Phi(x)``, ``dx = g * (Phi(x) + x * phi(x))`` with
    ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``;
    ``"tanh"``: ``y = x * (1 + t) / 2``, ``t = tanh(c * (x + 0.044715 x^3))``,
    ``dx = g * ((1 + t) / 2 + x / 2 * (1 - t^2) * c * (1 + 3 * 0.044715 x^2))``, ``c = sqrt(2 / pi)``."""
    (g,), x = grads, node.inputs[0]

    def scalar(v):
        return e.scalar_like(v, x)

    square = e.op("Mul", [x, x])
    if attribute(node, "approximate", "none") == "tanh":
        c, k = np.sqrt(2 / np.pi), 0.044715
        inner = e.op("Mul", [scalar(c), e.op("Add", [x, e.op("Mul", [scalar(k), e.op("Mul", [square, x])])])])
        t = e.op("Tanh", [inner])
        half_one_plus_t = e.op("Mul", [scalar(0.5), e.op("Add", [scalar(1.0), t])])
        d_inner = e.op("Mul", [scalar(c), e.op("Add", [scalar(1.0), e.op("Mul", [scalar(3 * k), square])])])
        rest = e.op("Mul", [e.op("Mul", [scalar(0.5), x]),
                            e.op("Mul", [e.op("Sub", [scalar(1.0), e.op("Mul", [t, t])]), d_inner])])
        return [e.op("Mul", [g, e.op("Add", [half_one_plus_t, rest])])]
    erf = e.op("Erf", [e.op("Mul", [x, scalar(1 / np.sqrt(2))])])
    cdf = e.op("Mul", [scalar(0.5), e.op("Add", [scalar(1.0), erf])])
    pdf = e.op("Mul", [scalar(1 / np.sqrt(2 * np.pi)), e.op("Exp", [e.op("Mul", [square, scalar(-0.5)])])])
    return [e.op("Mul", [g, e.op("Add", [cdf, e.op("Mul", [x, pdf])])])]


@rule("Max", "Min")
def _max_min(node, grads, e):
    """``dx_i = unb(g * m_i / sum_j m_j)`` with ``m_i = (x_i == y)``: ties share the gradient."""
    (g,), y = grads, node.outputs[0]
    if len(node.inputs) == 1:
        return [g]
    hits = [e.cast_like(e.op("Equal", [x, y]), y) for x in node.inputs]
    share = e.op("Div", [g, e.op("Sum", hits)])
    return [e.unbroadcast(e.op("Mul", [share, hit]), x, y) for x, hit in zip(node.inputs, hits)]


@rule("Mean")
def _mean(node, grads, e):
    """``dx_i = unb(g / n)``."""
    (g,), y = grads, node.outputs[0]
    share = e.op("Div", [g, e.scalar_like(float(len(node.inputs)), y)])
    return [e.unbroadcast(share, x, y) for x in node.inputs]


@rule("PRelu")
def _prelu(node, grads, e):
    """``y = x`` where ``x >= 0``, else ``slope * x`` (``slope`` broadcast to ``x``):
    ``dx = g`` where ``x >= 0``, else ``g * slope``; ``dslope = unb(g * x where x < 0, else 0)``."""
    (g,), (x, slope), y = grads, node.inputs, node.outputs[0]
    negative = e.op("Less", [x, e.scalar_like(0.0, x)])
    dx = e.op("Where", [negative, e.op("Mul", [g, slope]), g])
    dslope = e.op("Where", [negative, e.op("Mul", [g, x]), e.scalar_like(0.0, x)])
    return [dx, e.unbroadcast(dslope, slope, y)]


@rule("Mish")
def _mish(node, grads, e):
    """``y = x * tanh(softplus(x))``: ``dx = g * (t + x * (1 - t * t) * sigmoid(x))``, ``t = tanh(softplus(x))``."""
    (g,), x = grads, node.inputs[0]
    t = e.op("Tanh", [e.op("Softplus", [x])])
    sech2 = e.op("Sub", [e.scalar_like(1.0, x), e.op("Mul", [t, t])])
    slope = e.op("Add", [t, e.op("Mul", [x, e.op("Mul", [sech2, e.op("Sigmoid", [x])])])])
    return [e.op("Mul", [g, slope])]


@rule("CastLike")
def _cast_like(node, grads, e):
    """``dx = cast(g, dtype of x)`` (for float inputs); the target gives only its type and gets none."""
    x = node.inputs[0]
    return [e.cast_like(grads[0], x) if x.dtype.is_floating_point() else None, None]
