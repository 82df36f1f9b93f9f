"""BatchNormalization and Dropout in training mode (with the running statistics as buffers) or in
inference mode."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt import names
from graphopt.preparation.copying import copied


def to_training_mode(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` with BatchNormalization and Dropout nodes in training mode, and its buffers:
    ``{running statistic: output carrying its update}``."""
    result = copied(model)
    graph = result.graph
    initializers = {t.name for t in graph.initializer}
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
                extra_nodes.append(helper.make_node("Identity", [running], [names.new(stat)]))
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
