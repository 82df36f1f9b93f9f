"""``Adagrad`` (ai.onnx.preview.training, version 1) as standard operators."""

from __future__ import annotations

import onnx

from graphopt.preview_training.builder import NodeBuilder
from graphopt.preview_training.signature import attributes, tensors


def lower_adagrad(node: onnx.NodeProto, b: NodeBuilder) -> None:
    """Inputs ``R, T, X1..Xn, G1..Gn, H1..Hn``, outputs ``X1_new..Xn_new, H1_new..Hn_new``; per tensor,
    in the order applied (attributes ``norm_coefficient`` = 0, ``decay_factor`` = 0, ``epsilon`` = 1e-6)::

        r = R / (1 + T * decay_factor)                      (float64, once per node)
        G_regularized = norm_coefficient * X + G
        H_new = H + G_regularized * G_regularized
        X_new = X - r * G_regularized / (Sqrt(H_new) + epsilon)
    """
    a = attributes(node)
    t = b.double(b.scalar(node.input[1]))
    r = b.op("Div", b.double(b.scalar(node.input[0])),
             b.op("Add", b.constant(1.0), b.op("Mul", t, b.constant(a["decay_factor"]))))
    for tensor in tensors(node, ("X", "G", "H"), ("X_new", "H_new")):
        (x, g, h), (x_out, h_out) = tensor.inputs, tensor.outputs
        g = b.op("Add", b.op("Mul", b.like(a["norm_coefficient"], x), x), g)
        h_new = b.op("Add", h, b.op("Mul", g, g), out=h_out)
        denominator = b.op("Add", b.op("Sqrt", h_new), b.like(a["epsilon"], x))
        b.op("Sub", x, b.op("Div", b.op("Mul", b.like(r, x), g), denominator), out=x_out)
