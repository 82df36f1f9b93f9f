"""Sequence operators the reverse pass can see through: a SplitToSequence read only by
SequenceAt at constant positions (torch's dynamo exporter writes ``chunk`` and ``split``
that way without its optimizer) is a Split."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.preparation.copying import copied
from graphopt.preparation.shapes import infer_shapes


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
    model = copied(model)
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
