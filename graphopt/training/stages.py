"""`split_stages`: one model cut into models run one after another, each computing a group of its outputs.

    stages = split_stages(gradients, [["fc2.w.grad", "fc2.b.grad"], ["fc1.w.grad", ...], ...])

What data-parallel training overlaps with the backward pass (`graphopt.distributed.overlap`): the first stage
runs the forward pass and the backward pass as far as the first group of gradients needs, so that their
allreduce can start while the next stage computes the next group.

Stage ``k`` holds every node an output of group ``k`` depends on that no earlier stage holds; a node no group
depends on (the loss, running statistics) joins the latest stage of the nodes it reads, so every stage runs
after those whose values it reads. The outputs in no group are computed where their node falls. A value one
stage computes and a later one reads crosses between them: an output of the one, an input of the other
(`graphopt.runtime.staged.StagedExecutable` passes it as an ONNX Runtime value, not a copy). An initializer
several stages read becomes an input of each (fed from one array) instead of a copy in each session; a
Constant node several stages read is copied into each (it is small, and ONNX Runtime folds what it feeds).

A node's subgraphs (If, Loop, Scan) count the names they read from the enclosing scope as its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.update.inplace import implicit_inputs


class StageSplitError(ValueError):
    """The model cannot be cut where asked: a value that would cross between stages is not a tensor of known
    type (what ONNX Runtime can hand from one session to the next)."""


@dataclass(frozen=True)
class Stage:
    """One stage: its model; which of its inputs are values of earlier stages (``received``) and shared
    initializers (``shared``), the others being the whole model's inputs; which of its outputs are the whole
    model's (``finals``) and which later stages read (``passed``; a value may be both)."""

    model: onnx.ModelProto
    finals: tuple[str, ...]
    received: tuple[str, ...]
    passed: tuple[str, ...]
    shared: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    stages: tuple[Stage, ...]
    shared: dict[str, np.ndarray]  # the initializers several stages read, by name


def split_stages(model: onnx.ModelProto, groups: Sequence[Sequence[str]]) -> Split:
    """``model`` cut into ``len(groups)`` stages, stage ``k`` computing the outputs in ``groups[k]``.

    Raises ValueError naming the output if a group names a value that is not an output of ``model``, or
    names one twice, and `StageSplitError` naming the value that cannot cross between stages; a group whose
    outputs earlier stages already computed gives a stage with no nodes."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    _check_groups(groups, outputs)
    stage_of = _assign(graph, groups)
    producer_stage = {out: stage_of[i] for i, node in enumerate(graph.node) for out in node.output if out}
    typed = _value_types(model)
    readers = _readers(graph, stage_of, producer_stage)
    initializers = {t.name: t for t in graph.initializer}
    shared = {name for name, stages in readers.items() if name in initializers and len(stages) > 1}
    constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant" and not node.input}
    graph_inputs = {i.name: i for i in graph.input}
    order = _order(graph)
    stages = []
    for k in range(len(groups)):
        read = sorted({name for name, stages_ in readers.items() if k in stages_}, key=order)
        copied = [constants[n] for n in read if n in constants and producer_stage[n] != k]
        nodes = copied + [node for i, node in enumerate(graph.node) if stage_of[i] == k]
        received = tuple(n for n in read if producer_stage.get(n, k) < k and n not in constants)
        own_shared = tuple(n for n in read if n in shared)
        passed = tuple(out for node in nodes for out in node.output
                       if out and out not in constants and any(s > k for s in readers.get(out, ())))
        finals = [o for o in outputs if producer_stage.get(o, 0) == k]
        inputs = [graph_inputs[n] for n in read if n in graph_inputs]
        inputs += [_value_info(n, typed) for n in (*received, *own_shared)]
        stage_model = _stage_model(model, nodes, inputs, [*finals, *(p for p in passed if p not in finals)], typed,
                                   [initializers[n] for n in read if n in initializers and n not in shared], k)
        stages.append(Stage(stage_model, tuple(finals), received, passed, own_shared))
    return Split(tuple(stages), {name: numpy_helper.to_array(initializers[name]) for name in shared})


def _check_groups(groups: Sequence[Sequence[str]], outputs: list[str]) -> None:
    seen: set[str] = set()
    for k, group in enumerate(groups):
        for name in group:
            if name not in outputs:
                raise ValueError(f"split_stages: group {k} names {name!r}, which is not an output of the model "
                                 f"(outputs: {outputs[:20]})")
            if name in seen:
                raise ValueError(f"split_stages: output {name!r} is in more than one group")
            seen.add(name)


def _inputs_of(node: onnx.NodeProto) -> list[str]:
    return [n for n in (*node.input, *sorted(implicit_inputs(node))) if n]


def _assign(graph: onnx.GraphProto, groups: Sequence[Sequence[str]]) -> list[int]:
    """Each node's stage: the first group depending on it, else the latest stage of the nodes it reads."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    stage_of: list[int | None] = [None] * len(graph.node)
    for k, group in enumerate(groups):
        pending = [producer[name] for name in group if name in producer]
        while pending:
            i = pending.pop()
            if stage_of[i] is not None:
                continue
            stage_of[i] = k
            pending.extend(producer[n] for n in _inputs_of(graph.node[i]) if n in producer)
    for i, node in enumerate(graph.node):  # topological order: what a node reads is placed before it
        if stage_of[i] is None:
            stage_of[i] = max((stage_of[producer[n]] for n in _inputs_of(node) if n in producer), default=0)
    return stage_of


def _readers(graph: onnx.GraphProto, stage_of: list[int], producer_stage: dict[str, int]) -> dict[str, set[int]]:
    """For each value read, the stages whose nodes read it; an output the model returns as it is (an input or
    initializer) counts as read by stage 0, which returns it."""
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in _inputs_of(node):
            readers.setdefault(name, set()).add(stage_of[i])
    for output in graph.output:
        if output.name not in producer_stage:  # an input or initializer returned as it is: the first stage does
            readers.setdefault(output.name, set()).add(0)
    return readers


def _order(graph: onnx.GraphProto):
    """Sort key: graph inputs first in their order, then values in the order they are made."""
    position = {i.name: k for k, i in enumerate(graph.input)}
    for node in graph.node:
        for out in node.output:
            position.setdefault(out, len(position))
    return lambda name: (position.get(name, len(position)), name)


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every value's type, as ONNX shape inference finds it (the graph's own inputs and outputs included)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    for tensor in graph.initializer:
        types.setdefault(tensor.name, onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                         tensor.dims))
    return types


def _value_info(name: str, typed: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    """``name``'s value info, for a stage's input or output: a tensor of a known element type."""
    info = typed.get(name)
    kind = info.type.WhichOneof("value") if info is not None else None
    if kind != "tensor_type" or not info.type.tensor_type.elem_type:
        what = f"a {kind.removesuffix('_type')}" if kind not in (None, "tensor_type") else \
            "unknown (ONNX shape inference could not tell it)"
        raise StageSplitError(f"split_stages: {name!r} would cross between stages, and its type is {what}; "
                              "only tensors of a known element type can")
    result = onnx.ValueInfoProto()
    result.CopyFrom(info)
    return result


def _stage_model(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 outputs: list[str], typed: dict[str, onnx.ValueInfoProto], initializers: list[onnx.TensorProto],
                 k: int) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(nodes, f"{model.graph.name}.stage{k}", inputs,
                                   [_value_info(name, typed) for name in outputs], initializers)
    result = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return result
