"""Edits that turn an inference model into one to train.

    model = inline_functions(model)                     # model-local functions -> plain nodes
    chosen = select_trainable(model, trainable=["conv*"], frozen=["*.bias"])
    model = promote_constants(model, ["W_const"])       # Constant / ConstantOfShape -> initializer
    model = untie_running_statistics(model)             # running stats an exporter merged with weights: parted
    model, buffers = to_training_mode(model)            # BatchNormalization and Dropout in training mode
    model = infer_shapes(model)                         # without serializing the weights

`buffers` maps each running statistic of a BatchNormalization (an initializer) to the
output ``<name>.new`` that carries its value after a step, as torch updates
``running_mean`` and ``running_var`` in ``train()`` mode (the running variance with the
unbiased batch variance, as torch, not ONNX's biased one).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper

from graphopt import names

Selector = str | Sequence[str] | None


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its model-local functions (as exporters wrap modules in) inlined."""
    return onnx.inliner.inline_local_functions(model) if model.functions else model


def running_statistics(model: onnx.ModelProto) -> list[str]:
    """The initializers that BatchNormalization nodes read as running mean and variance."""
    return [name for n in model.graph.node if n.op_type == "BatchNormalization" for name in n.input[3:5]]


def select_trainable(model: onnx.ModelProto, trainable: Selector = None, frozen: Selector = None,
                     default: Sequence[str] | None = None) -> list[str]:
    """The float initializers to train, in model order: those matching ``trainable`` (names or
    ``fnmatch`` patterns; else ``default``, else all, running statistics excepted) less those
    matching ``frozen``."""
    floats = float_initializers(model)
    if trainable is None:
        chosen = floats if default is None else [name for name in floats if name in set(default)]
    else:
        chosen = matching(floats, trainable, "trainable")
    dropped = set() if frozen is None else set(matching(floats, frozen, "frozen"))
    return [name for name in chosen if name not in dropped]


def float_initializers(model: onnx.ModelProto) -> list[str]:
    """The float initializers, running statistics excepted, in model order."""
    stats = set(running_statistics(model))
    return [t.name for t in model.graph.initializer
            if helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f" and t.name not in stats]


def matching(candidates: list[str], selector: str | Sequence[str], what: str) -> list[str]:
    patterns = [selector] if isinstance(selector, str) else list(selector)
    matched = set()
    for pattern in patterns:
        hits = fnmatch.filter(candidates, pattern)
        if not hits:
            raise ValueError(f"{what}: {pattern!r} matches none of the candidate float initializers "
                             f"{candidates[:30]}")
        matched.update(hits)
    return [name for name in candidates if name in matched]


def promote_constants(model: onnx.ModelProto, which: bool | Sequence[str] = True) -> onnx.ModelProto:
    """``model`` with float Constant and ConstantOfShape (of a constant shape) outputs turned
    into initializers of the same name: all of them (``which=True``) or those named."""
    result = _copy(model)
    graph = result.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    promoted, kept = [], []
    for node in graph.node:
        value = _constant_value(node, constants)
        if value is not None:
            constants[node.output[0]] = value
        wanted = which is True or (which and node.output and node.output[0] in which)
        if value is not None and value.dtype.kind == "f" and wanted:
            promoted.append(numpy_helper.from_array(value, node.output[0]))
        else:
            kept.append(node)
    if which is not True and which:
        missing = sorted(set(which) - {t.name for t in promoted})
        if missing:
            raise ValueError(f"promote_constants: {missing} are not outputs of float Constant or "
                             f"ConstantOfShape nodes with a constant shape")
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(promoted)
    return result


def _constant_value(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        attr = node.attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.array(helper.get_attribute_value(attr), np.float32)
    if node.op_type == "ConstantOfShape" and node.input[0] in constants:
        fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
        return np.full(constants[node.input[0]].astype(np.int64), fill[0], fill.dtype)
    return None


def to_training_mode(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` with BatchNormalization and Dropout nodes in training mode, and its buffers:
    ``{running statistic: output carrying its update}``."""
    result = _copy(untie_running_statistics(model))
    graph = result.graph
    initializers = {t.name: t for t in graph.initializer}
    opset = next((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), 1)
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


def sequences_to_split(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` where each ``SplitToSequence`` read only by ``SequenceAt`` at constant positions
    (as torch's dynamo exporter writes ``chunk`` and ``split`` without its optimizer) is a
    ``Split`` whose outputs those positions name (squeezed for ``keepdims=0``). The number of
    pieces must be known: from a 1-D ``split`` input, or the split axis's static size. Others
    are left as they are (and raise later as operators without a gradient rule). ``model`` is
    shape-inferred, at opset 18 or later; so is the result."""
    graph = model.graph
    if not any(node.op_type == "SplitToSequence" for node in graph.node):
        return model
    model = _copy(model)
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs, rewritten = {o.name for o in graph.output}, set()
    for node in [n for n in graph.node if n.op_type == "SplitToSequence"]:
        sequence, users = node.output[0], readers.get(node.output[0], [])
        if sequence in outputs or not users or any(u.op_type != "SequenceAt" or u.input[1] not in values
                                                   for u in users):
            continue
        lengths = _split_lengths(node, values, dims)
        if lengths is None:
            continue
        has_split = len(node.input) > 1 and bool(node.input[1])  # then keepdims is ignored
        squeeze = not has_split and not next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        pieces = [f"{sequence}/{i}" for i in range(len(lengths))]
        rewritten.add(sequence)
        graph.initializer.append(numpy_helper.from_array(np.array(lengths, np.int64), f"{sequence}/lengths"))
        node.CopyFrom(helper.make_node("Split", [node.input[0], f"{sequence}/lengths"], pieces, axis=axis,
                                       name=node.name))
        for user in users:
            piece = pieces[int(values[user.input[1]]) % len(pieces)]
            if not squeeze:
                user.CopyFrom(helper.make_node("Identity", [piece], [user.output[0]], name=user.name))
            else:
                graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), f"{piece}/axis"))
                user.CopyFrom(helper.make_node("Squeeze", [piece, f"{piece}/axis"], [user.output[0]], name=user.name))
    kept = [v for v in graph.value_info if v.name not in rewritten]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return infer_shapes(model, data_prop=True) if rewritten else model  # the pieces typed


def _split_lengths(node: onnx.NodeProto, values: dict, dims: dict) -> list[int] | None:
    """The lengths of a SplitToSequence's pieces, or None when they are not known statically."""
    split = values.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if split is not None and split.ndim == 1:
        return [int(v) for v in split]
    shape = dims.get(node.input[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    size = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    if size is None or (len(node.input) > 1 and node.input[1] and split is None):
        return None
    step = 1 if split is None else int(split)
    return [step] * (size // step) + ([size % step] if size % step else [])


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
    model = _copy(model)
    graph = model.graph
    for node in [graph.node[i] for i in tied]:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]),
                                                         node.output[0]))
        graph.node.remove(node)
    return model


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


_SMALL = 1024  # bytes: initializers up to this size stay in the copy shape inference reads (shape tensors)


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` without serializing the weights: initializers over
    1 KiB are stood in for by graph inputs of their type and shape while inference runs (it
    only reads the values of small integer tensors), then the result's types are put on a copy."""
    graph = model.graph
    large = [t for t in graph.initializer if t.ByteSize() > _SMALL]
    light_graph = helper.make_graph(
        list(graph.node), graph.name,
        [*graph.input, *(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in large)],
        list(graph.output), [t for t in graph.initializer if t.ByteSize() <= _SMALL], value_info=list(graph.value_info))
    light = helper.make_model(light_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                              functions=list(model.functions))
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=data_prop).graph
    result = _copy(model)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.value_info)
    del result.graph.output[:]
    result.graph.output.extend(inferred.output)
    return result
