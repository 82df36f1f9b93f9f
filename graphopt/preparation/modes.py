"""BatchNormalization and Dropout in training mode (with the running statistics as buffers) or in
inference mode."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt import names
from graphopt.preparation.constants import untie_running_statistics
from graphopt.preparation.copying import copied
from graphopt.preparation.normalize import opset_of


def to_training_mode(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` with BatchNormalization and Dropout nodes in training mode, and its buffers:
    ``{running statistic: output carrying its update}``."""
    result = copied(untie_running_statistics(model))
    graph = result.graph
    initializers = {t.name: t for t in graph.initializer}
    opset = opset_of(result)
    buffers: dict[str, str] = {}
    extra_nodes = []
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            _set_attribute(node, "training_mode", 1)
            while len(node.output) < 3:
                node.output.append(f"{node.output[0]}/running_{len(node.output)}")
            for stat, running in zip(node.input[3:5], node.output[1:3]):
                if stat not in initializers:
                    raise ValueError(f"BatchNormalization node {node.name!r}: its running statistic {stat!r} "
                                     f"must be an initializer")
                if stat in buffers:
                    raise ValueError(f"running statistic {stat!r} is shared by two BatchNormalization nodes")
                buffers[stat] = names.new(stat)
            extra_nodes.append(helper.make_node("Identity", [node.output[1]], [names.new(node.input[3])]))
            extra_nodes.extend(_unbiased_running_variance(node, initializers[node.input[4]].data_type, opset))
        elif node.op_type == "Dropout" and (len(node.input) < 3 or not node.input[2]):
            while len(node.input) < 2:
                node.input.append("")
            if not node.input[1]:
                node.input[1] = _ensure(graph, "graphopt/dropout_ratio", np.array(0.5, np.float32))
            node.input[2:] = [_ensure(graph, "graphopt/training", np.array(True))]
    graph.node.extend(extra_nodes)
    graph.output.extend(helper.make_tensor_value_info(out, onnx.TensorProto.UNDEFINED, None)
                        for out in buffers.values())
    return result, buffers


def _unbiased_running_variance(node: onnx.NodeProto, dtype: int, opset: int) -> list[onnx.NodeProto]:
    """Nodes computing ``<running_var>.new`` as torch does, from BatchNormalization's own output.

    ONNX (and ONNX Runtime) update the running variance with the biased batch variance ``v``:
    ``r' = momentum * r + (1 - momentum) * v``; torch takes the unbiased ``v * n / (n - 1)``,
    ``n`` the elements per channel: ``r_torch = r' + (1 - momentum) * v / (n - 1)``, with ``v``
    the mean of ``(x - mean)^2`` over all axes but 1 of ``x`` viewed as ``[N, C, -1]``.
    Only ``r'`` and ``x`` are read, never ``r``: ONNX Runtime's kernel writes ``r'`` into
    ``r``'s buffer (``Alias(4, 2)``), so a reader of ``r`` could see either value."""
    x, stat, running = node.input[0], node.input[4], node.output[2]
    momentum = next((a.f for a in node.attribute if a.name == "momentum"), 0.9)
    p = f"{names.new(stat)}/unbiased/"

    def constant(name, value, np_dtype=helper.tensor_dtype_to_np_dtype(dtype)):
        return helper.make_node("Constant", [], [p + name], value=numpy_helper.from_array(
            np.array(value, np_dtype), p + name))

    def mean(inputs, output, keepdims):
        if opset >= 18:
            return [helper.make_node("ReduceMean", [inputs, p + "axes"], [output], keepdims=keepdims)]
        return [helper.make_node("ReduceMean", [inputs], [output], axes=[0, 2], keepdims=keepdims)]

    return [
        constant("view", [0, 0, -1], np.int64), constant("axes", [0, 2], np.int64),
        helper.make_node("Reshape", [x, p + "view"], [p + "x"]),
        *mean(p + "x", p + "mean", 1),
        helper.make_node("Sub", [p + "x", p + "mean"], [p + "centered"]),
        helper.make_node("Mul", [p + "centered", p + "centered"], [p + "squared"]),
        *mean(p + "squared", p + "variance_x", 0),
        helper.make_node("Cast", [p + "variance_x"], [p + "variance"], to=dtype),
        helper.make_node("Size", [x], [p + "size"]),
        helper.make_node("Shape", [x], [p + "shape"]),
        constant("axis", [1], np.int64),
        helper.make_node("Gather", [p + "shape", p + "axis"], [p + "channels"]),
        helper.make_node("Div", [p + "size", p + "channels"], [p + "n_int"]),
        helper.make_node("Cast", [p + "n_int"], [p + "n"], to=dtype),
        constant("one", 1.0), constant("weight", 1.0 - momentum),
        helper.make_node("Sub", [p + "n", p + "one"], [p + "n_minus_1"]),
        helper.make_node("Mul", [p + "weight", p + "variance"], [p + "weighted"]),
        helper.make_node("Div", [p + "weighted", p + "n_minus_1"], [p + "correction"]),
        helper.make_node("Add", [running, p + "correction"], [names.new(stat)]),
    ]


def to_inference_mode(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with BatchNormalization (running statistics) and Dropout (identity) nodes in
    inference mode, what ``module.eval()`` computes: for a model exported in training mode."""
    result = copied(model)
    read = {name for node in result.graph.node for name in node.input} | {o.name for o in result.graph.output}
    for node in result.graph.node:
        if node.op_type not in ("BatchNormalization", "Dropout"):
            continue
        used = [name for name in node.output[1:] if name in read]
        if used:
            raise ValueError(f"{node.op_type} node {node.name!r}: its training outputs {used} are read; "
                             f"it cannot run in inference mode")
        del node.output[1:]
        if node.op_type == "BatchNormalization":
            _set_attribute(node, "training_mode", 0)
        else:
            del node.input[2:]
    return result


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _ensure(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    if name not in {t.name for t in graph.initializer}:
        graph.initializer.append(numpy_helper.from_array(value, name))
    return name
