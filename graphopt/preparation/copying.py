"""Copying a model before editing it."""

from __future__ import annotations

import onnx


def copied(model: onnx.ModelProto) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result
