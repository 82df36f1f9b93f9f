"""The symbolic graph layer: `Sym` values with dtype and shape, lowered to ONNX via onnx-ir."""

from graphopt.symbolic.errors import GraphBuildError
from graphopt.symbolic.graph import IR_VERSION, OPSET, Graph, broadcast_shapes
from graphopt.symbolic.ops import (cast, clip, isinf, matmul, maximum, mean_over, minimum, sign, sqrt, sum_of_squares,
                                  sum_of_squares_over, transpose, where)
from graphopt.symbolic.value import Sym

__all__ = [
    "Graph", "GraphBuildError", "IR_VERSION", "OPSET", "Sym", "broadcast_shapes", "cast", "clip",
    "isinf", "matmul", "maximum", "mean_over", "minimum", "sign", "sqrt", "sum_of_squares", "sum_of_squares_over",
    "transpose", "where",
]
