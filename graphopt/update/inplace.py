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

The proof must hold on the graph ONNX Runtime *executes*, not only on the one graphopt
built: its optimizers rewrite graphs (a ``Transpose`` pair cancels, ``Transpose`` and
``MatMul`` fuse), and a node that read a parameter through a chain that ran before
the update may then read the parameter itself, after the update wrote it.
`proven_in_place` therefore checks both graphs: the model, and the optimized graph
the session saved (`graphopt.runtime.Executable.optimized`). A writer of another
domain (an ONNX Runtime fusion) is never taken to be elementwise, except graphopt's fused
kernels (domain ``ai.graphopt.fused``), which by construction read every input of element ``i``
before writing any output of element ``i`` (`graphopt.fused`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import onnx

from graphopt.native.kernel import DOMAIN as FUSED_DOMAIN

if TYPE_CHECKING:
    from graphopt.runtime import Executable

ELEMENTWISE = frozenset({
    "Abs", "Add", "Cast", "Clip", "Div", "Exp", "Identity", "LeakyRelu", "Log", "Max", "Mean", "Min", "Mul", "Neg",
    "Pow", "Reciprocal", "Relu", "Sigmoid", "Sign", "Sqrt", "Sub", "Sum", "Tanh", "Where",
})
VIEW_LIKE = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def in_place_pairs(graph: onnx.GraphProto, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The ``(input, output)`` pairs of ``graph`` that may share one buffer."""
    index = _GraphIndex(graph)
    return {(i, o) for i, o in pairs if index.can_write_in_place(i, o)}


def proven_in_place(model: onnx.ModelProto, executable: Executable,
                     pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The pairs that may share one buffer in ``model`` and in the graph ``executable`` runs
    (compiled with ``keep_optimized=True``; without that graph, none)."""
    if executable.optimized is None:
        return set()
    pairs = list(pairs)
    return in_place_pairs(model.graph, pairs) & in_place_pairs(executable.optimized.graph, pairs)


def can_write_in_place(graph: onnx.GraphProto, input_name: str, output_name: str) -> bool:
    """Whether output ``output_name`` may be written into input ``input_name``'s buffer."""
    return _GraphIndex(graph).can_write_in_place(input_name, output_name)


class _GraphIndex:
    """Producers, readers and subgraph reads of one graph's nodes, computed once for many pairs."""

    def __init__(self, graph: onnx.GraphProto):
        self.outputs = {o.name for o in graph.output}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.reads = {id(node): (*node.input, *implicit_inputs(node)) for node in graph.node}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in set(self.reads[id(node)]):
                self.readers.setdefault(name, []).append(node)
        self.order = _topological(graph.node, self.reads, self.producers)
        self.position = {id(node): k for k, node in enumerate(self.order)}
        self._bits: dict[int, int] | None = None

    def can_write_in_place(self, input_name: str, output_name: str) -> bool:
        if input_name in self.outputs:
            return False
        writer = self.producers.get(output_name)
        if writer is None:
            return False
        aliases = self._aliases(input_name)
        if not _writes_elementwise(writer, aliases, output_name):
            return False
        readers = {id(n) for name in aliases for n in self.readers.get(name, ())} - {id(writer)}
        ancestors = self._ancestor_bits()[id(writer)]
        return all(ancestors >> self.position[r] & 1 for r in readers)

    def _aliases(self, name: str) -> set[str]:
        """``name`` and every value that may share its memory through view-like ops."""
        aliases, stack = {name}, [name]
        while stack:
            for node in self.readers.get(stack.pop(), ()):
                if node.op_type in VIEW_LIKE and node.input and node.input[0] in aliases:
                    fresh = [o for o in node.output if o not in aliases]
                    aliases.update(fresh)
                    stack.extend(fresh)
        return aliases

    def _ancestor_bits(self) -> dict[int, int]:
        """Per node (by id), the set of nodes it depends on (through inputs and its subgraphs'
        implicit inputs) as bits of their `position`: computed once, in topological order."""
        if self._bits is None:
            bits: dict[int, int] = {}
            for node in self.order:
                mask = 0
                for name in self.reads[id(node)]:
                    parent = self.producers.get(name)
                    if parent is not None:
                        mask |= bits[id(parent)] | 1 << self.position[id(parent)]
                bits[id(node)] = mask
            self._bits = bits
        return self._bits


def _topological(nodes, reads: dict[int, tuple], producers: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` with every producer before its readers (ONNX asks graphs to be sorted; this
    does not rely on it)."""
    pending = {id(node): len({id(producers[n]) for n in reads[id(node)] if n in producers}) for node in nodes}
    children: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        for parent in {id(producers[n]) for n in reads[id(node)] if n in producers}:
            children.setdefault(parent, []).append(node)
    ready = [node for node in nodes if not pending[id(node)]]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for child in children.get(id(node), ()):
            pending[id(child)] -= 1
            if not pending[id(child)]:
                ready.append(child)
    if len(order) != len(nodes):
        raise ValueError("in-place analysis: the graph has a cycle")
    return order


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope."""
    names: set[str] = set()
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            defined = {i.name for i in subgraph.input} | {t.name for t in subgraph.initializer}
            for inner in subgraph.node:
                names.update(n for n in (*inner.input, *implicit_inputs(inner)) if n and n not in defined)
                defined.update(inner.output)
    return names


def _writes_elementwise(writer: onnx.NodeProto, aliases: set[str], output_name: str) -> bool:
    """Whether ``writer`` reads ``aliases`` only where writing ``output_name`` over them is safe."""
    positions = [k for k, name in enumerate(writer.input) if name in aliases]
    if writer.domain == FUSED_DOMAIN:  # graphopt's own kernels read all of element i before writing element i
        return True
    if writer.domain not in ("", "ai.onnx"):
        return False
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
