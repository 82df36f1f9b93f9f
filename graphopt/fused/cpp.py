"""C++ spellings of ONNX element types and of constant values (exact, as hexadecimal floats)."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from graphopt.fused.errors import NotFusable

CPP_TYPES = {
    TensorProto.FLOAT: "float",
    TensorProto.DOUBLE: "double",
    TensorProto.BOOL: "bool",
    TensorProto.INT64: "int64_t",
}
FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE)


def cpp_type(elem_type: int, where: str) -> str:
    """The C++ type of ONNX element type ``elem_type``; `NotFusable` (naming ``where``) for others."""
    if elem_type not in CPP_TYPES:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise NotFusable(f"{where}: element type {name} is not supported by fused kernels "
                         f"(float, double, bool, int64 are)")
    return CPP_TYPES[elem_type]


def literal(value: float | bool | int, elem_type: int) -> str:
    """``value`` as a C++ expression of the C++ type of ``elem_type``, exactly (hex floats)."""
    if elem_type == TensorProto.BOOL:
        return "true" if value else "false"
    if elem_type == TensorProto.INT64:
        return f"static_cast<int64_t>({int(value)}LL)"
    ctype = CPP_TYPES[elem_type]
    value = float(np.float32(value)) if elem_type == TensorProto.FLOAT else float(value)
    if math.isnan(value):
        return f"std::numeric_limits<{ctype}>::quiet_NaN()"
    if math.isinf(value):
        sign = "-" if value < 0 else ""
        return f"({sign}std::numeric_limits<{ctype}>::infinity())"
    text = value.hex()  # exact; a float32 value is exactly a double, so its hex is exact too
    return f"static_cast<{ctype}>({text})" if ctype == "float" else f"({text})"
