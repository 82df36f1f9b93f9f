"""``Gradient`` (ai.onnx.preview.training, version 1) through graphopt's reverse pass.

A ``Gradient(xs, zs, y)`` node's outputs are ``dy/dx`` for each ``x`` in ``xs``, evaluated where
``xs`` and ``zs`` take the values of the node's inputs (in that order). It is lowered as:

1. the *forward model*: the nodes of the main graph that compute ``y`` from ``xs`` and ``zs``
   (the walk back from ``y`` stops at them), with ``xs``, ``zs`` and the graph inputs and
   initializers it reads as its inputs and ``y`` as its output;
2. `graphopt.autodiff.add_gradients(forward, loss=y, wrt=xs)`: standard operators only;
3. that model inlined where the Gradient node was, its ``xs`` and ``zs`` read from the node's
   inputs, its ``<x>.grad`` outputs written to the node's outputs, every other value renamed.

So ``y`` must be a float scalar (the spec leaves ``dy/dx`` of a tensor ``y`` undefined), every
operator on the way has a gradient rule, and the forward computation is repeated (not shared
with the main graph) where the node's inputs are the tensors named in ``xs`` / ``zs``. A
Gradient node reading another one's output, or one inside a subgraph, is an error.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import helper

from graphopt import names
from graphopt.autodiff import UnsupportedOperator, add_gradients
from graphopt.preview_training.builder import NodeBuilder
from graphopt.preview_training.errors import PreviewTrainingError, describe
from graphopt.preview_training.signature import DOMAIN, attributes
from graphopt.preview_training.types import value_types
from graphopt.symbolic import IR_VERSION
from graphopt.update.inplace import implicit_inputs


def lower_gradients(model: onnx.ModelProto, taken: set[str]) -> None:
    """Replaces the Gradient nodes of ``model``'s main graph in place (``taken``: the names in use)."""
    graph = model.graph
    if not any(_is_gradient(node) for node in graph.node):
        return
    types = value_types(model)
    lowered = []
    for node in graph.node:
        lowered.extend(_lowered(node, model, types, taken) if _is_gradient(node) else [node])
    del graph.node[:]
    graph.node.extend(lowered)


def _is_gradient(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == "Gradient"


def _lowered(node: onnx.NodeProto, model: onnx.ModelProto, types: dict[str, onnx.TypeProto],
             taken: set[str]) -> list[onnx.NodeProto]:
    a = attributes(node)
    xs, zs, y = list(a["xs"]), list(a["zs"] or []), a["y"]
    if len(set(xs + zs)) != len(xs) + len(zs):
        raise PreviewTrainingError(f"{describe(node)}: attributes 'xs' {xs} and 'zs' {zs} must name distinct tensors")
    if len(node.input) != len(xs) + len(zs):
        raise PreviewTrainingError(f"{describe(node)}: expected {len(xs) + len(zs)} inputs (the values of xs {xs} "
                                   f"then zs {zs}), got {len(node.input)}: {list(node.input)}")
    if len(node.output) > len(xs):
        raise PreviewTrainingError(f"{describe(node)}: at most {len(xs)} outputs (dy/dx for x in xs {xs}), "
                                   f"got {len(node.output)}: {list(node.output)}")
    forward, outer = _forward_model(node, model, xs + zs, y, types)
    try:
        backward = add_gradients(forward, loss=y, wrt=xs)
    except (UnsupportedOperator, ValueError) as error:
        raise PreviewTrainingError(f"{describe(node)}: graphopt's reverse pass cannot differentiate y {y!r} "
                                   f"with respect to xs {xs}: {error}") from error
    renamed = {**dict(zip(xs + zs, node.input)), **{name: name for name in outer}}
    renamed.update({names.grad(x): out for x, out in zip(xs, node.output) if out})
    return _inlined(backward, renamed, [out for out in node.output if out],
                    NodeBuilder(taken, node.name or f"Gradient.{y}"))


def _forward_model(node: onnx.NodeProto, model: onnx.ModelProto, cut: list[str], y: str,
                   types: dict[str, onnx.TypeProto]) -> tuple[onnx.ModelProto, list[str]]:
    """The model computing ``y`` from the ``cut`` tensors and the main graph's inputs and initializers
    (``outer``, returned too) that it reads."""
    graph = model.graph
    producers = {out: k for k, n in enumerate(graph.node) for out in n.output if out}
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    chosen: set[int] = set()
    outer: list[str] = []
    pending, seen = [y], set()
    while pending:
        name = pending.pop()
        if name in seen or name in cut:
            continue
        seen.add(name)
        if name in producers:
            producer = graph.node[producers[name]]
            if producer.domain == DOMAIN:
                raise PreviewTrainingError(f"{describe(node)}: y {y!r} depends on the output {name!r} of "
                                           f"{describe(producer)}; a Gradient of a Gradient is not lowered")
            chosen.add(producers[name])
            pending.extend(n for n in (*producer.input, *implicit_inputs(producer)) if n)
        elif name in sources:
            outer.append(name)
        else:
            raise PreviewTrainingError(f"{describe(node)}: y {y!r} reads {name!r}, which no node, input or "
                                       "initializer of the main graph defines")
    inputs = [_typed(node, name, types) for name in [*cut, *outer]]
    forward = helper.make_graph([n for k, n in enumerate(graph.node) if k in chosen], f"{graph.name}.forward",
                                inputs, [_typed(node, y, types)])
    imports = [o for o in model.opset_import if o.domain != DOMAIN]
    return helper.make_model(forward, opset_imports=imports, ir_version=IR_VERSION), outer


def _typed(node: onnx.NodeProto, name: str, types: dict[str, onnx.TypeProto]) -> onnx.ValueInfoProto:
    if name not in types:
        raise PreviewTrainingError(f"{describe(node)}: the type of {name!r} is not known (shape inference "
                                   "could not find it); declare it in the graph's value_info")
    info = onnx.ValueInfoProto(name=name)
    info.type.CopyFrom(types[name])
    return info


def _inlined(model: onnx.ModelProto, renamed: dict[str, str], wanted: list[str],
             b: NodeBuilder) -> list[onnx.NodeProto]:
    """``model``'s nodes that ``wanted`` needs, their values named by ``renamed`` or else afresh."""
    for name in _defined(model.graph):
        if name not in renamed:
            renamed[name] = b.fresh()
    nodes = [_renamed_node(n, renamed, b) for n in model.graph.node]
    nodes += [helper.make_node("Constant", [], [renamed[t.name]], name=b.fresh(), value=t)
              for t in model.graph.initializer]
    return _needed(nodes, wanted)


def _defined(graph: onnx.GraphProto) -> Iterator[str]:
    """The names ``graph`` (and its subgraphs) define: inputs, initializers, node outputs."""
    yield from (v.name for v in graph.input)
    yield from (t.name for t in graph.initializer)
    for node in graph.node:
        yield from (out for out in node.output if out)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _defined(subgraph)


def _renamed_node(node: onnx.NodeProto, renamed: dict[str, str], b: NodeBuilder) -> onnx.NodeProto:
    result = onnx.NodeProto()
    result.CopyFrom(node)
    result.name = b.fresh()
    result.input[:] = [renamed.get(n, n) if n else n for n in node.input]
    result.output[:] = [renamed.get(n, n) if n else n for n in node.output]
    for attribute in result.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            _rename_graph(subgraph, renamed, b)
    return result


def _rename_graph(graph: onnx.GraphProto, renamed: dict[str, str], b: NodeBuilder) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renamed.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = renamed.get(tensor.name, tensor.name)
    nodes = [_renamed_node(n, renamed, b) for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def _needed(nodes: list[onnx.NodeProto], wanted: list[str]) -> list[onnx.NodeProto]:
    """The ``nodes`` that the values ``wanted`` depend on, in order."""
    needed, kept = set(wanted), []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(n for n in (*node.input, *implicit_inputs(node)) if n)
    return kept[::-1]
