"""``Momentum`` (ai.onnx.preview.training, version 1), standard and Nesterov, as standard operators."""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.preview_training.builder import NodeBuilder
from graphopt.preview_training.errors import PreviewTrainingError, describe
from graphopt.preview_training.signature import attributes, tensors

MODES = ("standard", "nesterov")


def lower_momentum(node: onnx.NodeProto, b: NodeBuilder) -> None:
    """Inputs ``R, T, X1..Xn, G1..Gn, V1..Vn``, outputs ``X1_new..Xn_new, V1_new..Vn_new``; per tensor,
    in the order applied (attributes ``alpha``, ``beta``, ``mode``, ``norm_coefficient``, all required)::

        beta_adjusted = T > 0 ? beta : 1                     (float64, once per node)
        G_regularized = norm_coefficient * X + G
        V_new = alpha * V + beta_adjusted * G_regularized
        X_new = X - R * V_new                                 (mode "standard")
        X_new = X - R * (G_regularized + alpha * V_new)       (mode "nesterov")
    """
    a = attributes(node)
    if a["mode"] not in MODES:
        raise PreviewTrainingError(f"{describe(node)}: attribute 'mode' must be one of {list(MODES)}, "
                                   f"got {a['mode']!r}")
    r = b.double(b.scalar(node.input[0]))
    later = b.op("Greater", b.scalar(node.input[1]), b.constant(0, np.int64))
    beta = b.op("Where", later, b.constant(a["beta"]), b.constant(1.0))
    for tensor in tensors(node, ("X", "G", "V"), ("X_new", "V_new")):
        (x, g, v), (x_out, v_out) = tensor.inputs, tensor.outputs
        alpha = b.like(a["alpha"], x)
        g = b.op("Add", b.op("Mul", b.like(a["norm_coefficient"], x), x), g)
        v_new = b.op("Add", b.op("Mul", alpha, v), b.op("Mul", b.like(beta, x), g), out=v_out)
        direction = v_new if a["mode"] == "standard" else b.op("Add", g, b.op("Mul", alpha, v_new))
        b.op("Sub", x, b.op("Mul", b.like(r, x), direction), out=x_out)
