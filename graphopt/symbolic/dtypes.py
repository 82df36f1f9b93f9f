"""Element types: numpy dtypes in the API, onnx-ir data types in the graph."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
SCALAR_DTYPE = np.dtype(np.float64)  # dtype of hyperparameters and all per-step scalar arithmetic


def to_ir(dtype: np.dtype) -> ir.DataType:
    return ir.DataType.from_numpy(np.dtype(dtype))


def is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in FLOAT_DTYPES
