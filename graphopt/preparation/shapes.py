"""Shape inference without serializing the weights."""

from __future__ import annotations

import math

import onnx
from onnx import helper

from graphopt.preparation.copying import copied


_SMALL = 1024  # bytes: initializers up to this size stay in the copy shape inference reads (shape tensors)


def _nbytes(tensor: onnx.TensorProto) -> int:
    """The tensor's size from its dims (``ByteSize()`` walks the data: tens of ms for a large weight)."""
    return math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` without serializing the weights: initializers over
    1 KiB are stood in for by graph inputs of their type and shape while inference runs (it
    only reads the values of small integer tensors), then the result's types are put on a copy."""
    graph = model.graph
    small = {t.name for t in graph.initializer if _nbytes(t) <= _SMALL}
    listed = {i.name for i in graph.input}  # below IR 4, initializers are inputs too
    large = [t for t in graph.initializer if t.name not in small and t.name not in listed]
    light_graph = helper.make_graph(
        list(graph.node), graph.name,
        [*graph.input, *(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in large)],
        list(graph.output), [t for t in graph.initializer if t.name in small], value_info=list(graph.value_info))
    light = helper.make_model(light_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                              functions=list(model.functions))
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=data_prop).graph
    result = copied(model)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.value_info)
    del result.graph.output[:]
    result.graph.output.extend(inferred.output)
    return result
