"""The types that ONNX shape inference gives a model's values, in the main graph and its subgraphs."""

from __future__ import annotations

import onnx
from onnx import helper

from graphopt.preparation import infer_shapes


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Each typed tensor value's type, by name (names are unique across a model's scopes)."""
    types: dict[str, onnx.TypeProto] = {}
    _collect(infer_shapes(model).graph, types)
    return types


def _collect(graph: onnx.GraphProto, types: dict[str, onnx.TypeProto]) -> None:
    types.update({t.name: helper.make_tensor_type_proto(t.data_type, list(t.dims)) for t in graph.initializer})
    types.update({v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)
                  if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type})
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _collect(subgraph, types)
