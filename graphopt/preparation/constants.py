"""Weights and running statistics that a model builds with Constant / ConstantOfShape nodes, made
initializers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.preparation.copying import copied
from graphopt.preparation.trainables import running_statistics


def implicit_initializers(model: onnx.ModelProto) -> list[str]:
    """The float Constant / ConstantOfShape outputs that stand for initializers, and that
    `weights_as_initializers` promotes unasked: those a BatchNormalization reads as running
    statistics (state that a training step updates), and every ConstantOfShape of a constant
    shape (a weight stored as its fill value, as in the files of ``onnx/backend/test/data/light``;
    constant folding would have made it an initializer)."""
    constants, stats, found = Constants(model.graph), set(running_statistics(model)), []
    for node in model.graph.node:
        value = constant_value(node, constants)
        if value is not None:
            constants.values[node.output[0]] = value
            if value.dtype.kind == "f" and (node.op_type == "ConstantOfShape" or node.output[0] in stats):
                found.append(node.output[0])
    return found


def weights_as_initializers(model: onnx.ModelProto, promote: bool | Sequence[str] = False) -> onnx.ModelProto:
    """``model`` with its `implicit_initializers` and the constants named by ``promote`` (True:
    every float Constant and ConstantOfShape of a constant shape; or a list of names) turned into
    initializers by `promote_constants`. Returns ``model`` itself when there are none."""
    if promote is True:
        return promote_constants(model, True)
    named = [promote] if isinstance(promote, str) else list(promote or ())
    which = [*implicit_initializers(model), *named]
    return promote_constants(model, which) if which else model


def promote_constants(model: onnx.ModelProto, which: bool | Sequence[str] = True) -> onnx.ModelProto:
    """``model`` with float Constant and ConstantOfShape (of a constant shape) outputs turned
    into initializers of the same name: all of them (``which=True``) or those named."""
    result = copied(model)
    graph = result.graph
    which = True if which is True else set([which] if isinstance(which, str) else which or ())
    constants = Constants(graph)
    promoted, kept = [], []
    for node in graph.node:
        value = constant_value(node, constants)
        if value is not None:
            constants.values[node.output[0]] = value
        wanted = which is True or (which and node.output and node.output[0] in which)
        if value is not None and value.dtype.kind == "f" and wanted:
            promoted.append((node.output[0], value))
        else:
            kept.append(node)
    if which is not True and which:
        missing = sorted(set(which) - {name for name, _ in promoted})
        if missing:
            raise ValueError(f"promote_constants: {missing} are not outputs of float Constant or "
                             f"ConstantOfShape nodes with a constant shape")
    del graph.node[:]
    graph.node.extend(kept)
    for name, value in promoted:  # written once, straight into the model (weights may be GBs)
        graph.initializer.add(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype), dims=value.shape,
                              raw_data=value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
    return result


class Constants:
    """Values known before run time: initializers (read when asked) and constant nodes' outputs."""

    def __init__(self, graph: onnx.GraphProto):
        self.initializers = {t.name: t for t in graph.initializer}
        self.values: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray | None:
        if name not in self.values and name in self.initializers:
            self.values[name] = numpy_helper.to_array(self.initializers[name])
        return self.values.get(name)


def constant_value(node: onnx.NodeProto, constants: Constants) -> np.ndarray | None:
    """The node's output if it is a Constant or a ConstantOfShape of a constant shape (a
    read-only broadcast view for the latter), else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        attr = node.attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.array(helper.get_attribute_value(attr), np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.array(helper.get_attribute_value(attr), np.int64)
    if node.op_type == "ConstantOfShape":
        shape = constants.get(node.input[0])
        if shape is not None:
            fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                        np.zeros(1, np.float32))
            return np.broadcast_to(fill.reshape(-1)[:1].reshape(()), tuple(shape.astype(np.int64)))
    return None


def untie_running_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` where each running statistic that an ``Identity`` ties to another initializer
    has its own initializer (a copy); ``model`` itself if none is tied. torch's exporter, folding
    constants in eval mode, merges initializers of equal values: a fresh BatchNorm's running_var
    (ones) becomes ``Identity(weight)`` and its running_mean ``Identity(bias)``, or the other way
    round; trained and updated, the two must part."""
    graph = model.graph
    stats = {name for node in graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]}
    initializers = {t.name: t for t in graph.initializer}
    tied = [i for i, node in enumerate(graph.node) if node.op_type == "Identity" and node.input[0] in initializers
            and (node.input[0] in stats or node.output[0] in stats)]
    if not tied:
        return model
    model = copied(model)
    graph = model.graph
    for node in [graph.node[i] for i in tied]:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]),
                                                         node.output[0]))
        graph.node.remove(node)
    return model
