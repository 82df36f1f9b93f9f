"""When may an output be written into the buffer of an input? A proof on the ONNX graph.

ONNX Runtime accepts the same buffer bound as an input and an output and never
checks: with ``y = x + 1`` bound onto ``x`` followed by ``z = x * y``, the ``Mul`` reads
the new ``x`` and silently computes ``(x + 1) ** 2``. Binding output ``O`` onto input
``I`` is safe when

1. ``O`` is written by an *elementwise* node ``W`` that reads ``I`` (if at all) only
   at an elementwise position: any input of an elementwise op, only ``C`` of a
   ``Gemm`` (ONNX Runtime copies ``C`` into ``Y`` before multiplying, so ``Y`` must not
   alias ``A`` or ``B``), or, for a ``Scan``, a scan input whose body passes this same
   test for the matching body input and output (iteration ``i`` reads and writes row
   ``i`` only);
2. every other node that reads ``I`` -- directly, through a view-like op that may
   alias it (Identity, Reshape, ...), or as an implicit input of a subgraph -- is an
   ancestor of ``W``, so any topological order runs it before ``W`` writes;
3. ``I`` is not itself a graph output.
"""

from __future__ import annotations

from typing import Iterable

import onnx

ELEMENTWISE = frozenset({
    "Abs", "Add", "Cast", "Clip", "Div", "Exp", "Identity", "LeakyRelu", "Log", "Max", "Mean", "Min", "Mul", "Neg",
    "Pow", "Reciprocal", "Relu", "Sigmoid", "Sign", "Sqrt", "Sub", "Sum", "Tanh", "Where",
})
VIEW_LIKE = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def in_place_pairs(graph: onnx.GraphProto, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The ``(input, output)`` pairs of ``graph`` that may share one buffer."""
    return {(i, o) for i, o in pairs if can_write_in_place(graph, i, o)}


def can_write_in_place(graph: onnx.GraphProto, input_name: str, output_name: str) -> bool:
    """Whether output ``output_name`` may be written into input ``input_name``'s buffer."""
    if any(o.name == input_name for o in graph.output):
        return False
    producers = {out: node for node in graph.node for out in node.output}
    writer = producers.get(output_name)
    if writer is None:
        return False
    aliases = _aliases(graph, input_name)
    if not _writes_elementwise(writer, aliases, output_name):
        return False
    ancestors = _ancestors(graph, writer, producers)
    return all(id(node) in ancestors for node in _readers(graph, aliases) if node is not writer)


def _aliases(graph: onnx.GraphProto, name: str) -> set[str]:
    """``name`` and every value that may share its memory through view-like ops."""
    aliases = {name}
    for node in graph.node:  # nodes are in topological order
        if node.op_type in VIEW_LIKE and node.input and node.input[0] in aliases:
            aliases.update(node.output)
    return aliases


def _readers(graph: onnx.GraphProto, names: set[str]) -> list[onnx.NodeProto]:
    """Nodes that read any of ``names``, as an input or from inside a subgraph."""
    return [node for node in graph.node if names & (set(node.input) | _implicit_inputs(node))]


def _implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope."""
    names: set[str] = set()
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            defined = {i.name for i in subgraph.input} | {t.name for t in subgraph.initializer}
            for inner in subgraph.node:
                names.update(n for n in (*inner.input, *_implicit_inputs(inner)) if n and n not in defined)
                defined.update(inner.output)
    return names


def _writes_elementwise(writer: onnx.NodeProto, aliases: set[str], output_name: str) -> bool:
    """Whether ``writer`` reads ``aliases`` only where writing ``output_name`` over them is safe."""
    positions = [k for k, name in enumerate(writer.input) if name in aliases]
    if writer.op_type == "Gemm":
        return all(k == 2 for k in positions)
    if writer.op_type == "Scan":
        return _scan_writes_rowwise(writer, positions, output_name)
    return writer.op_type in ELEMENTWISE


def _scan_writes_rowwise(scan: onnx.NodeProto, positions: list[int], output_name: str) -> bool:
    attributes = {a.name: a for a in scan.attribute}
    body = attributes["body"].g
    num_scan_inputs = attributes["num_scan_inputs"].i
    carried = len(scan.input) - num_scan_inputs
    if carried or any(a in attributes for a in ("scan_input_axes", "scan_output_axes",
                                                  "scan_input_directions", "scan_output_directions")):
        return False  # only the plain form graphopt emits: no carried state, axis 0, forward
    if len(positions) != 1:
        return False
    inner_input = body.input[positions[0]].name
    inner_output = body.output[list(scan.output).index(output_name)].name
    return can_write_in_place(body, inner_input, inner_output)


def _ancestors(graph: onnx.GraphProto, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> set[int]:
    """ids of the nodes ``node`` depends on, through inputs and its subgraphs' implicit inputs."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for name in (*current.input, *_implicit_inputs(current)):
            parent = producers.get(name)
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    return seen
