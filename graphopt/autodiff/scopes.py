"""Subgraphs (Loop and Scan bodies, If branches) as the reverse pass sees them: a node reads its
inputs and the values of enclosing scopes its subgraphs use (implicit inputs, which torch's
``nn.EmbeddingBag`` export reads its weight as). Control flow is not differentiated: a value
to differentiate that reaches the loss through it is an error naming what to freeze."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir


def subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs in ``node``'s attributes (a Loop's or Scan's body, an If's branches)."""
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def reads(node: ir.Node) -> list[ir.Value]:
    """``node``'s inputs and the values of enclosing scopes its subgraphs read (implicit inputs)."""
    values = [v for v in node.inputs if v is not None]
    for graph in subgraphs(node):
        defined = {*graph.inputs, *graph.initializers.values()}
        for inner in graph:
            defined.update(inner.outputs)
            values.extend(v for v in reads(inner) if v not in defined)
        values.extend(v for v in graph.outputs if v not in defined)
    return list(dict.fromkeys(values))


def through_control_flow(node: ir.Node, nodes: list[ir.Node], targets: list[ir.Value],
                         needed: set[ir.Value]) -> str:
    """The error message for a Loop, If or Scan node that a differentiated value flows through
    (``needed``: the values on a path from the ``targets`` to the loss)."""
    flowing = [v for v in reads(node) if v in needed]
    implicit = [v.name for v in flowing if v not in node.inputs]
    sources = [t.name for t in targets if node in _consumers(nodes, t)]
    how = f", read by its body from the enclosing scope: {implicit}" if implicit else ""
    return (
        f"no gradient through {node.op_type} node {node.name!r} (control flow is not differentiated): "
        f"{sources} reach the loss through it{how}. Freeze them (frozen=[...]) or leave them out of wrt")


def _consumers(nodes: list[ir.Node], source: ir.Value) -> set[ir.Node]:
    """The nodes that depend on ``source``."""
    reached, consumers = {source}, set()
    for node in nodes:
        if any(v in reached for v in reads(node)):
            consumers.add(node)
            reached.update(node.outputs)
    return consumers
