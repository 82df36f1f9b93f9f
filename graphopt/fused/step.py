"""The training step with fused update kernels inside it: one graph, one ONNX Runtime call.

`fuse_training_step` takes the standard training-step model (`graphopt.training.step`: forward,
backward, a standard-operator update) and the fused models of some of its param groups, and gives
the same model -- same inputs, same outputs, same names -- in which each tensor of those groups is
updated by the group's fused custom node instead of the standard operators. Per tensor ``p`` of such
a group, the group's fused update model (`graphopt.fused.model`: its outer scalar arithmetic and the
one custom node) is copied into the step graph with the chunked update's names mapped to ``p``'s:

==============================  ==============================================================
chunked model                   step model, tensor ``p`` of group ``g``
==============================  ==============================================================
``params``, ``grads``           ``p`` and the gradient value ``p.grad`` (the backward pass's)
``<slot>``                      ``p.<slot>``
``g.step``, ``g.<scalar slot>``  ``p.step``, ``p.<scalar slot>`` (each tensor its own, as the
                                standard step has them)
``g.<hyper>``                   ``g.<hyper>`` (shared)
``g.sum_of_squares``            the group's sum of squares: the fused reduction copied per tensor
                                the same way, its 0-d double results added in tensor order (``Sum``)
outputs ``params.new``,         the step model's outputs ``p.new``, ``p.<slot>.new``,
``<slot>.new``, ...             ``p.<scalar slot>.new``
==============================  ==============================================================

The custom node takes each tensor at its own shape (a kernel reads elementwise inputs of equal element
count, and its outputs take input 0's shape), so nothing is reshaped or copied. The standard nodes that
computed those outputs are removed (what no output needs any more); the others stay, e.g. ``p.step.new``
and a schedule's clock. A group whose chain reads a name the step model does not have raises `NotFusable`.
Each fused node is ordered after every other reader of its parameter (`_after_readers`), so the Trainer can
prove every parameter safe to write in place, even a weight the backward pass reads after its gradient.
Guarded steps (a non-finite check or a loss scale) are not fused here: a kernel that wrote a parameter
in place could not be undone when the check says skip (`graphopt.fused.runtime.fused_training_step`
keeps them standard).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt import names
from graphopt.fused.errors import NotFusable
from graphopt.fused.model import FusedModels, live_nodes
from graphopt.native.kernel import DOMAIN
from graphopt.update import GroupSpec, ParamSpec
from graphopt.update.chunked import GRADS, PARAMS, SUM_OF_SQUARES
from graphopt.update.inplace import VIEW_LIKE, implicit_inputs


def fuse_training_step(step: onnx.ModelProto,
                       groups: Sequence[tuple[GroupSpec, Mapping[np.dtype, FusedModels]]]) -> onnx.ModelProto:
    """``step`` with the update of each ``(group, fused models by dtype)`` done by fused nodes (module docstring)."""
    graph = step.graph
    taken = {v.name for v in [*graph.input, *graph.output, *graph.value_info]} | {t.name for t in graph.initializer}
    taken |= {o for n in graph.node for o in n.output}
    node_names = {n.name for n in graph.node}
    splicer = _Splicer(taken, node_names, {v.name for v in graph.input} | {o for n in graph.node for o in n.output}
                       | {t.name for t in graph.initializer})
    written: dict[str, str] = {}  # step output -> the fused value that now computes it
    for group, by_dtype in groups:
        total = _group_total(splicer, group, by_dtype)
        for spec in group.params:
            models = by_dtype[np.dtype(spec.dtype)]
            mapping = _inputs(group, spec, total)
            outputs = _outputs(group, spec)
            for chunked, value in splicer.splice(models.update.model, mapping, f"fused/{spec.name}").items():
                written[outputs[chunked]] = value
            operand = _float_operand(models.update.fragment)
            if operand is not None:
                splicer.writers.update({id(n): operand for n in splicer.last if n.domain == DOMAIN})
    return _assemble(step, splicer, written)


def _inputs(group: GroupSpec, spec: ParamSpec, total: str | None) -> dict[str, str]:
    """Chunked-model input name -> step-model value name, for tensor ``spec`` of ``group``."""
    transform = group.transform
    mapping = {PARAMS: spec.name, GRADS: names.grad(spec.name), names.step(group.name): names.step(spec.name)}
    mapping.update({slot: names.state(spec.name, slot) for slot in transform.all_slots()})
    mapping.update({names.state(group.name, slot): names.state(spec.name, slot) for slot in transform.scalar_slots()})
    if total is not None:
        mapping[names.hyper(group.name, SUM_OF_SQUARES)] = total
    return mapping


def _outputs(group: GroupSpec, spec: ParamSpec) -> dict[str, str]:
    """Chunked-model output name -> step-model output name, for tensor ``spec`` of ``group``."""
    transform = group.transform
    mapping = {names.new(PARAMS): names.new(spec.name)}
    mapping.update({names.new(slot): names.new(names.state(spec.name, slot)) for slot in transform.all_slots()})
    mapping.update({names.new(names.state(group.name, slot)): names.new(names.state(spec.name, slot))
                    for slot in transform.scalar_slots()})
    return mapping


def _group_total(splicer: _Splicer, group: GroupSpec, by_dtype: Mapping[np.dtype, FusedModels]) -> str | None:
    """The group's sum of squares (a 0-d double value of the step graph), or None if its chain takes none."""
    reductions = {dtype: models.reduce for dtype, models in by_dtype.items()}
    if all(r is None for r in reductions.values()):
        return None
    partials = []
    for spec in group.params:
        reduce = reductions[np.dtype(spec.dtype)]
        if reduce is None:
            raise NotFusable(f"group {group.name!r}: the chain takes a sum of squares for some dtypes only")
        result = splicer.splice(reduce.model, _inputs(group, spec, None), f"fused/{spec.name}/reduce")
        partials.append(result[SUM_OF_SQUARES])
    total = splicer.fresh(f"fused/{group.name}.{SUM_OF_SQUARES}")
    splicer.nodes.append(helper.make_node("Sum", partials, [total], name=splicer.fresh_node(total)))
    splicer.available.add(total)
    return total


class _Splicer:
    """Copies models into the step graph with fresh names: collects their nodes and initializers."""

    def __init__(self, taken: set[str], node_names: set[str], available: set[str]):
        self.taken, self.node_names, self.available = taken, node_names, available
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.last: list[onnx.NodeProto] = []  # the nodes of the last `splice`
        self.writers: dict[int, int] = {}  # fused update node (by id) -> the input that can carry an order

    def fresh(self, name: str) -> str:
        return names.fresh(name, self.taken)

    def fresh_node(self, name: str) -> str:
        return names.fresh(name, self.node_names)

    def splice(self, model: onnx.ModelProto, inputs: Mapping[str, str], prefix: str) -> dict[str, str]:
        """Copy ``model``'s nodes, its inputs read from the step graph's values ``inputs[name]`` (a name not
        mapped is read as itself: a hyperparameter); its outputs' new names by output name."""
        graph = model.graph
        renamed = {}
        self.last = []
        for value in graph.input:
            source = inputs.get(value.name, value.name)
            if source not in self.available:
                raise NotFusable(f"the fused update reads {value.name!r} as {source!r}, which the training step "
                                 "does not have")
            renamed[value.name] = source
        for tensor in graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = renamed[tensor.name] = self.fresh(f"{prefix}/{tensor.name}")
            self.initializers.append(copy)
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise NotFusable(f"node {node.name!r} of the fused model has a subgraph; it is not copied into "
                                 "the training step")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(renamed[i] if i else "" for i in node.input)
            del copy.output[:]
            for out in node.output:
                if out:
                    renamed[out] = self.fresh(f"{prefix}/{out}")
                copy.output.append(renamed[out] if out else "")
            copy.name = self.fresh_node(f"{prefix}/{node.name or node.op_type}")
            self.nodes.append(copy)
            self.last.append(copy)
            self.available.update(o for o in copy.output if o)
        return {o.name: renamed[o.name] for o in graph.output}


def _assemble(step: onnx.ModelProto, splicer: _Splicer, written: Mapping[str, str]) -> onnx.ModelProto:
    """``step`` with the spliced nodes, each output in ``written`` computed by its fused value, and the
    nodes no output needs any more removed."""
    graph = step.graph
    outputs = [o.name for o in graph.output]
    missing = sorted(set(written) - set(outputs))
    if missing:
        raise NotFusable(f"the fused update writes {missing[:5]}, which are not outputs of the training step")
    nodes = []
    for node in graph.node:  # the standard producers of the replaced outputs write fresh names (then dead)
        if any(o in written for o in node.output):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.output[:]
            copy.output.extend(splicer.fresh(f"{o}.standard") if o in written else o for o in node.output)
            node = copy
        nodes.append(node)
    renames = {value: output for output, value in written.items()}
    for node in splicer.nodes:  # the fused values that are outputs take the outputs' names
        for k, out in enumerate(node.output):
            node.output[k] = renames.get(out, out)
        for k, name in enumerate(node.input):
            node.input[k] = renames.get(name, name)
    live = live_nodes([*nodes, *splicer.nodes], outputs)
    live += _after_readers(live, splicer)
    used = {i for n in live for i in (*n.input, *implicit_inputs(n))}
    new_graph = helper.make_graph(_topological(live, {v.name for v in graph.input} | {t.name for t in
                                                                                      graph.initializer}
                                               | {t.name for t in splicer.initializers}),
                                  graph.name, list(graph.input), list(graph.output),
                                  [t for t in [*graph.initializer, *splicer.initializers] if t.name in used])
    opsets = [o for o in step.opset_import if o.domain != DOMAIN] + [helper.make_opsetid(DOMAIN, 1)]
    fused = helper.make_model(new_graph, opset_imports=opsets, ir_version=step.ir_version,
                              producer_name=step.producer_name, doc_string=f"{step.doc_string} (fused update)")
    onnx.checker.check_model(fused)
    return fused


def _float_operand(fragment: str) -> int | None:
    """The index of the fragment's first float or double scalar input (``Where`` takes both), or None."""
    types = [int(t) for t in re.search(r"graphopt_input_types\[\] = \{([^}]*)\}", fragment).group(1).split(",")]
    elementwise = int(re.search(r"graphopt_elementwise_inputs = (\d+);", fragment).group(1))
    return next((k for k in range(elementwise, len(types)) if types[k] in (TensorProto.FLOAT, TensorProto.DOUBLE)),
                None)


def _after_readers(nodes: list[onnx.NodeProto], splicer: _Splicer) -> list[onnx.NodeProto]:
    """Make every other reader of a fused node's parameter an ancestor of the node, so its output may be
    written over the parameter in place (`graphopt.update.inplace`, condition 2): a weight that the backward
    pass reads after its gradient is ready (``dX = dY W``) would otherwise need a scratch buffer and a copy.

    The order is a data dependency of the node's first float scalar operand ``s``, which keeps its value:
    ``s <- Where(Less(Size(r), 0), s, s)`` for an output ``r`` of each such reader (``Size`` reads no data, and
    is never below 0). Readers that depend on the node itself are left alone (the pair then stays unproven,
    and the Trainer writes through scratch). The nodes added are returned; the fused nodes are changed in place.
    """
    producers = {o: n for n in nodes for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in {*node.input, *implicit_inputs(node)}:
            readers.setdefault(name, []).append(node)
    added: list[onnx.NodeProto] = []
    zero = None
    depends = _dependence(nodes, producers)
    for node in nodes:
        count = splicer.writers.get(id(node))
        if count is None:
            continue  # not a fused update, or no float scalar operand to carry the order
        late = [r for name in _aliases(node.input[0], readers) for r in readers.get(name, ())
                if r is not node and not depends(node, r)]
        if not late or any(depends(r, node) for r in late):
            continue
        if zero is None:
            zero = splicer.fresh("fused/order.zero")
            splicer.initializers.append(helper.make_tensor(zero, TensorProto.INT64, [], [0]))
        operand = node.input[count]
        for reader in {id(r): r for r in late}.values():
            value = next(o for o in reader.output if o)
            size, never, ordered = (splicer.fresh(f"{operand}.after.{value}.{k}") for k in ("size", "never", "value"))
            added += [helper.make_node("Size", [value], [size], name=splicer.fresh_node(size)),
                      helper.make_node("Less", [size, zero], [never], name=splicer.fresh_node(never)),
                      helper.make_node("Where", [never, operand, operand], [ordered], name=splicer.fresh_node(ordered))]
            operand = ordered
        node.input[count] = operand
    return added


def _aliases(name: str, readers: Mapping[str, list[onnx.NodeProto]]) -> set[str]:
    """``name`` and the values that may share its memory through view-like ops (`graphopt.update.inplace`)."""
    aliases, stack = {name}, [name]
    while stack:
        for node in readers.get(stack.pop(), ()):
            if node.op_type in VIEW_LIKE and node.input and node.input[0] in aliases:
                fresh = [o for o in node.output if o and o not in aliases]
                aliases.update(fresh)
                stack.extend(fresh)
    return aliases


def _dependence(nodes: list[onnx.NodeProto], producers: Mapping[str, onnx.NodeProto]):
    """``depends(a, b)``: whether node ``a`` reads, directly or through other nodes, what node ``b`` makes.
    Every node's ancestors are one integer's bits (one bit per node), each the union of its producers' sets,
    computed once in topological order: a large model's thousands of fused nodes each ask about a few readers."""
    position = {id(node): k for k, node in enumerate(nodes)}
    ancestors: dict[int, int] = {}
    for node in _topological(nodes, set()):
        bits = 0
        for name in (*node.input, *implicit_inputs(node)):
            producer = producers.get(name)
            if producer is not None:
                bits |= ancestors[id(producer)] | 1 << position[id(producer)]
        ancestors[id(node)] = bits
    return lambda a, b: bool(ancestors[id(a)] >> position[id(b)] & 1)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` with producers first, keeping the given order where it is valid (a stable Kahn sort)."""
    producers = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    waiting = [{producers[i] for i in (*n.input, *implicit_inputs(n)) if i in producers and i not in available}
               for n in nodes]
    readers: dict[int, list[int]] = {}
    for k, parents in enumerate(waiting):
        for parent in parents:
            readers.setdefault(parent, []).append(k)
    ready = [k for k, parents in enumerate(waiting) if not parents]
    heapq.heapify(ready)
    ordered = []
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for child in readers.get(k, ()):
            waiting[child].discard(k)
            if not waiting[child]:
                heapq.heappush(ready, child)
    if len(ordered) != len(nodes):
        raise NotFusable("the fused training step's nodes have a cycle")
    return ordered
