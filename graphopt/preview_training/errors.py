"""The error raised for a preview-training node that cannot be lowered, and how it names the node."""

from __future__ import annotations

import onnx


class PreviewTrainingError(ValueError):
    """An ``ai.onnx.preview.training`` node that cannot be lowered to standard operators."""


def describe(node: onnx.NodeProto) -> str:
    """``Adam node 'opt' (outputs ['W.new', ...])``: the op type, the node's name and its outputs."""
    return f"{node.op_type} node {node.name!r} (outputs {list(node.output)})"
