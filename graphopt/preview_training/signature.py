"""What a preview optimizer node must look like: its variadic inputs and outputs, its attributes.

The attribute types, defaults and required flags are read from ONNX's own schema
(``onnx.defs.get_schema(op, 1, "ai.onnx.preview.training")``), so they are the spec's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from graphopt.preview_training.errors import PreviewTrainingError, describe

DOMAIN = "ai.onnx.preview.training"


@dataclass(frozen=True)
class Tensors:
    """One optimized tensor of a node: its inputs (``X``, ``G`` and the states) and its outputs
    (``X_new`` and the new states; ``""`` where an output is left unnamed)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def tensors(node: onnx.NodeProto, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> list[Tensors]:
    """``node``'s tensors: after ``R`` and ``T`` come ``n`` of each of ``inputs`` (``X1..Xn``,
    ``G1..Gn``, ...), and the outputs are ``n`` of each of ``outputs``."""
    variadic = list(node.input[2:])
    layout = f"R, T, then {', '.join(f'{k}1..{k}n' for k in inputs)}"
    if len(variadic) < len(inputs) or len(variadic) % len(inputs):
        raise PreviewTrainingError(f"{describe(node)}: expected inputs {layout} (2 + {len(inputs)}n inputs), "
                                   f"got {len(node.input)}: {list(node.input)}")
    missing = [k for k, name in enumerate(node.input) if not name]
    if missing:
        raise PreviewTrainingError(f"{describe(node)}: inputs {missing} are empty; none of {layout} is optional")
    n = len(variadic) // len(inputs)
    if len(node.output) != n * len(outputs):
        expected = ", ".join(f"{k}1..{k}n" for k in outputs)
        raise PreviewTrainingError(f"{describe(node)}: {n} optimized tensor(s) give {n * len(outputs)} outputs "
                                   f"({expected}), got {len(node.output)}: {list(node.output)}")
    return [Tensors(tuple(variadic[j * n + i] for j in range(len(inputs))),
                    tuple(node.output[j * n + i] for j in range(len(outputs)))) for i in range(n)]


FLOATS = {onnx.TensorProto.FLOAT: "float", onnx.TensorProto.DOUBLE: "double"}
INT64 = {onnx.TensorProto.INT64: "int64"}


def check_types(node: onnx.NodeProto, types: dict[str, onnx.TypeProto]) -> None:
    """Where shape inference knows them: ``R`` a one-element float or double, ``T`` a one-element
    int64, the optimized tensors, their gradients and states float or double, all of one dtype."""
    known = {name: types[name].tensor_type for name in node.input if name in types}
    for name, what, allowed in ((node.input[0], "R", FLOATS), (node.input[1], "T", INT64)):
        if name not in known:
            continue
        expected = f"{'an' if allowed is INT64 else 'a'} {' or '.join(allowed.values())} scalar"
        if known[name].elem_type not in allowed:
            raise PreviewTrainingError(f"{describe(node)}: input {what} ({name!r}) must be {expected}, "
                                       f"got {_element(known[name])}")
        dims = _dims(known[name])
        if dims is not None and math.prod(dims) != 1:
            raise PreviewTrainingError(f"{describe(node)}: input {what} ({name!r}) must be {expected}, "
                                       f"got shape {dims}")
    tensors = {name: known[name].elem_type for name in node.input[2:] if name in known}
    if any(elem not in FLOATS for elem in tensors.values()) or len(set(tensors.values())) > 1:
        found = {name: _element(known[name]) for name in tensors}
        raise PreviewTrainingError(f"{describe(node)}: the optimized tensors, gradients and states must be all "
                                   f"float or all double, got {found}")


def _element(tensor: onnx.TypeProto.Tensor) -> str:
    return onnx.TensorProto.DataType.Name(tensor.elem_type)


def _dims(tensor: onnx.TypeProto.Tensor) -> list[int] | None:
    """The static shape, or None where the rank or a dimension is unknown."""
    if not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
        return None
    return [d.dim_value for d in tensor.shape.dim]


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """``node``'s attributes, each checked against the schema's type, defaults filled in."""
    schema = onnx.defs.get_schema(node.op_type, 1, DOMAIN)
    given = {a.name: a for a in node.attribute}
    unknown = sorted(set(given) - set(schema.attributes))
    if unknown:
        raise PreviewTrainingError(f"{describe(node)}: unknown attribute(s) {unknown}; "
                                   f"{node.op_type} has {sorted(schema.attributes)}")
    values = {}
    for name, spec in schema.attributes.items():
        expected = onnx.AttributeProto.AttributeType.Name(spec.type.value)
        if name in given:
            if given[name].type != spec.type.value:
                actual = onnx.AttributeProto.AttributeType.Name(given[name].type)
                raise PreviewTrainingError(f"{describe(node)}: attribute {name!r} must be {expected}, got {actual}")
            value = helper.get_attribute_value(given[name])
        elif spec.required:
            raise PreviewTrainingError(f"{describe(node)}: required attribute {name!r} ({expected}) is missing")
        else:
            value = helper.get_attribute_value(spec.default_value)
        values[name] = _decoded(value)
    return values


def _decoded(value: Any) -> Any:
    """STRING and STRINGS attributes as ``str``."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value
