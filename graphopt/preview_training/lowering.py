"""`lower_preview_training`: a model's ``ai.onnx.preview.training`` nodes as standard ``ai.onnx`` operators."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import onnx
from onnx import helper

from graphopt.preparation import loaded, normalized
from graphopt.preparation.copying import copied
from graphopt.preview_training.adagrad import lower_adagrad
from graphopt.preview_training.adam import lower_adam
from graphopt.preview_training.builder import NodeBuilder
from graphopt.preview_training.errors import PreviewTrainingError, describe
from graphopt.preview_training.gradient import lower_gradients
from graphopt.preview_training.momentum import lower_momentum
from graphopt.preview_training.signature import DOMAIN, check_types
from graphopt.preview_training.types import value_types
from graphopt.symbolic import OPSET

LOWERINGS: dict[str, Callable[[onnx.NodeProto, NodeBuilder], None]] = {
    "Adagrad": lower_adagrad, "Adam": lower_adam, "Momentum": lower_momentum}


def lower_preview_training(model: onnx.ModelProto | str | os.PathLike, *,
                           base_dir: str | os.PathLike | None = None) -> onnx.ModelProto:
    """``model`` with its ``ai.onnx.preview.training`` nodes (``Adagrad``, ``Momentum``, ``Adam``, in the
    main graph and in ``If`` / ``Loop`` / ``Scan`` bodies; ``Gradient`` in the main graph) replaced by
    standard ``ai.onnx`` operators that compute what ONNX's operator spec says, so that plain
    onnxruntime runs it. The inputs and outputs stay as they are; the model comes back at the pinned
    opset and IR version (`graphopt.symbolic.OPSET`, ``IR_VERSION``) without the preview domain import;
    the given model is not changed. Each operator's formula is in its module's docstring (`adagrad`,
    `momentum`, `adam`, `gradient`): a node's scalars (``R``, ``T`` and what is computed from them
    alone) in float64, cast once to each tensor's dtype; the tensor arithmetic in the tensors' dtype,
    in the spec's order.

    A node that cannot be lowered (an unknown preview operator, wrong input or output counts, a
    missing or mistyped attribute, a ``mode`` other than ``"standard"`` / ``"nesterov"``, a
    ``Gradient`` the reverse pass cannot serve) raises `PreviewTrainingError` naming it. External
    data is read as by `graphopt.preparation.loaded`.
    """
    model = copied(normalized(loaded(model, "lower_preview_training", base_dir)))
    taken = set(_names(model.graph))
    # first without types, on the nodes alone: a malformed node fails here with an error naming what is wrong,
    # not inside ONNX's shape inference
    _lower_graph(onnx.GraphProto(node=model.graph.node), set(taken), {}, nested=False)
    _lower_graph(model.graph, taken, value_types(model), nested=False)
    lower_gradients(model, taken)
    imports = [o for o in model.opset_import if o.domain != DOMAIN]
    if not any(o.domain in ("", "ai.onnx") for o in imports):
        imports.append(helper.make_opsetid("", OPSET))
    del model.opset_import[:]
    model.opset_import.extend(imports)
    onnx.checker.check_model(model, full_check=True)
    return model


def _lower_graph(graph: onnx.GraphProto, taken: set[str], types: dict[str, onnx.TypeProto], nested: bool) -> None:
    """Replaces ``graph``'s optimizer nodes (and those of its subgraphs) in place; Gradient nodes of
    the main graph are left for `lower_gradients`."""
    lowered = []
    for node in graph.node:
        for subgraph in _subgraphs(node):
            _lower_graph(subgraph, taken, types, nested=True)
        if node.domain != DOMAIN:
            lowered.append(node)
        elif node.op_type in LOWERINGS:
            check_types(node, types)
            builder = NodeBuilder(taken, node.name or f"{node.op_type}.{node.output[0] if node.output else ''}")
            LOWERINGS[node.op_type](node, builder)
            lowered.extend(builder.nodes)
        elif node.op_type == "Gradient" and not nested:
            lowered.append(node)
        elif node.op_type == "Gradient":
            raise PreviewTrainingError(f"{describe(node)}: a Gradient node inside a subgraph (an If, Loop or "
                                       "Scan body) cannot be lowered; only those of the main graph can")
        else:
            raise PreviewTrainingError(f"{describe(node)}: {node.op_type!r} is not an operator of {DOMAIN!r} "
                                       f"that can be lowered ({sorted(LOWERINGS) + ['Gradient']})")
    del graph.node[:]
    graph.node.extend(lowered)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name of ``graph`` and its subgraphs."""
    yield from (v.name for v in (*graph.input, *graph.output, *graph.value_info))
    yield from (t.name for t in graph.initializer)
    for node in graph.node:
        yield from (*node.input, *node.output)
        for subgraph in _subgraphs(node):
            yield from _names(subgraph)
