"""``Adam`` (ai.onnx.preview.training, version 1) as standard operators.

ONNX's Adam is not torch's: ``epsilon`` is added to ``Sqrt(H_new)`` before the bias correction
of ``H`` is applied to the learning rate, ``T`` = 0 means no bias correction, and there is a
post-update decay ``norm_coefficient_post``. The lowering follows ONNX, not torch.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.preview_training.builder import NodeBuilder
from graphopt.preview_training.signature import attributes, tensors


def lower_adam(node: onnx.NodeProto, b: NodeBuilder) -> None:
    """Inputs ``R, T, X1..Xn, G1..Gn, V1..Vn, H1..Hn``, outputs ``X_new.., V_new.., H_new..``; per tensor,
    in the order applied (attributes ``alpha`` = 0.9, ``beta`` = 0.999, ``epsilon`` = 1e-6,
    ``norm_coefficient`` = 0, ``norm_coefficient_post`` = 0)::

        R_adjusted = T > 0 ? R * Sqrt(1 - beta ** T) / (1 - alpha ** T) : R     (float64, once per node)
        G_regularized = norm_coefficient * X + G
        V_new = alpha * V + (1 - alpha) * G_regularized
        H_new = beta * H + (1 - beta) * (G_regularized * G_regularized)
        X_new = X - R_adjusted * (V_new / (Sqrt(H_new) + epsilon))
        X_final = (1 - norm_coefficient_post) * X_new         (the product is left out when it is 0)
    """
    a = attributes(node)
    r = b.double(b.scalar(node.input[0]))
    t = b.scalar(node.input[1])
    t_double = b.double(t)
    one = b.constant(1.0)
    beta_t, alpha_t = (b.op("Pow", b.constant(a[k]), t_double) for k in ("beta", "alpha"))
    corrected = b.op("Div", b.op("Mul", r, b.op("Sqrt", b.op("Sub", one, beta_t))), b.op("Sub", one, alpha_t))
    rate = b.op("Where", b.op("Greater", t, b.constant(0, np.int64)), corrected, r)
    for tensor in tensors(node, ("X", "G", "V", "H"), ("X_new", "V_new", "H_new")):
        (x, g, v, h), (x_out, v_out, h_out) = tensor.inputs, tensor.outputs
        g = b.op("Add", b.op("Mul", b.like(a["norm_coefficient"], x), x), g)
        v_new = b.op("Add", b.op("Mul", b.like(a["alpha"], x), v), b.op("Mul", b.like(1.0 - a["alpha"], x), g),
                     out=v_out)
        h_new = b.op("Add", b.op("Mul", b.like(a["beta"], x), h),
                     b.op("Mul", b.like(1.0 - a["beta"], x), b.op("Mul", g, g)), out=h_out)
        denominator = b.op("Add", b.op("Sqrt", h_new), b.like(a["epsilon"], x))
        step = b.op("Mul", b.like(rate, x), b.op("Div", v_new, denominator))
        if a["norm_coefficient_post"] == 0:
            b.op("Sub", x, step, out=x_out)
        else:
            b.op("Mul", b.like(1.0 - a["norm_coefficient_post"], x), b.op("Sub", x, step), out=x_out)
