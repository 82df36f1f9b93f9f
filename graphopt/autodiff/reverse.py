"""The reverse pass: append the gradient of a scalar loss to an ONNX model.

    model = add_gradients(model, loss="loss", wrt=["W", "b"])  # outputs "W.grad", "b.grad" too

The model is first brought to the pinned opset and shape-inferred. Only nodes on a
path from a ``wrt`` tensor to the loss are differentiated, in reverse topological
order; a value used several times has its gradients summed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import names
from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.recurrent import expand_recurrent
from graphopt.autodiff.scopes import reads, subgraphs, through_control_flow
from graphopt.autodiff.rules import PARTIAL, RULES, supported
from graphopt.preparation import (
    loaded,
    fold_constant_expressions,
    float_initializers,
    infer_shapes,
    matching,
    normalized,
    sequences_to_split,
)
from graphopt.symbolic import IR_VERSION


class UnsupportedOperator(NotImplementedError):
    """A node on the path to the loss has no gradient rule."""


def prepare(model: onnx.ModelProto) -> ir.Model:
    """``model`` `normalized` (local functions inlined, pinned opset and IR version), its small
    constant expressions folded, shape-inferred, its SplitToSequence / SequenceAt pairs made
    Splits, as onnx-ir."""
    model = sequences_to_split(infer_shapes(fold_constant_expressions(normalized(model)), data_prop=True))
    return ir.serde.deserialize_model(model)


def add_gradients(model: onnx.ModelProto | str | os.PathLike, loss: str, wrt: str | Sequence[str] | None = None,
                  *, frozen: str | Sequence[str] | None = None,
                  base_dir: str | os.PathLike | None = None) -> onnx.ModelProto:
    """``model`` with an output ``<name>.grad`` for every tensor in ``wrt``: graph input names,
    and initializer names or ``fnmatch`` patterns (default: `differentiable_initializers`),
    less the initializers matching ``frozen``. External data is read from the model file's
    folder, or from ``base_dir`` for a ``ModelProto`` loaded without it (`preparation.loaded`)."""
    model = loaded(model, "add_gradients", base_dir)
    ir_model, emitter, targets, grads = _backward(model, loss, _selected(model, wrt, frozen))
    if wrt is None:  # the default: those the reverse pass reached (see differentiable_initializers)
        targets = [t for t in targets if t in grads]
    graph = ir_model.graph
    for target in targets:
        grad = grads.get(target)
        if grad is None:  # the loss does not depend on it
            grad = _zeros_like(emitter, target)
        out = emitter.op("Identity", [grad])
        out.name, out.shape, out.type = names.grad(target.name), target.shape, target.type
        graph.outputs.append(out)
    _remove_unused(graph, emitter.created)
    ir_model.ir_version = IR_VERSION
    proto = ir.serde.serialize_model(ir_model)
    typed = [info for info in proto.graph.value_info if info.type.HasField("tensor_type")]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(typed)  # backward values are typed by shape inference below
    proto = infer_shapes(proto)
    ranked = [info for info in proto.graph.value_info if info.type.tensor_type.HasField("shape")]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(ranked)  # drop what inference could not rank (a Split by run-time sizes)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def differentiable_initializers(model: onnx.ModelProto, loss: str, *, frozen: str | Sequence[str] | None = None,
                                base_dir: str | os.PathLike | None = None) -> list[str]:
    """The float initializers (running statistics and those matching ``frozen`` excepted) that the
    loss depends on through a differentiable input: not, say, a Dropout ratio, a Clip bound or a
    constant Pow exponent, which an optimizer's weight decay would otherwise change. External
    data as for `add_gradients`."""
    model = loaded(model, "differentiable_initializers", base_dir)
    _, _, targets, grads = _backward(model, loss, _selected(model, None, frozen))
    return [t.name for t in targets if t in grads]


def _backward(model: onnx.ModelProto, loss: str, wrt: Sequence[str]):
    """The model as onnx-ir with the reverse pass appended: ``(model, emitter, targets, grads)``,
    where ``grads`` maps each value on a path to the loss to its gradient."""
    ir_model = prepare(model)
    graph = ir_model.graph
    values = _values(graph)
    if loss not in values:
        raise ValueError(f"loss {loss!r} is not a value of the model (outputs: {[v.name for v in graph.outputs]})")
    loss_value = values[loss]
    if loss_value.shape is None or any(d != 1 for d in loss_value.shape) or not loss_value.dtype.is_floating_point():
        raise ValueError(f"loss {loss!r} must be a float scalar, got {loss_value.dtype} {loss_value.shape}")
    targets = []
    for name in wrt:
        if name not in values or not values[name].dtype.is_floating_point():
            raise ValueError(f"wrt: {name!r} is not a float input or initializer of the model")
        targets.append(values[name])
    _expose_outputs(graph)
    expand_recurrent(ir_model, _on_a_path(list(graph), targets, loss_value))  # LSTM, GRU, RNN: unrolled
    emitter = Emitter(graph)
    return ir_model, emitter, targets, _reverse(graph, loss_value, targets, emitter)


def _selected(model: onnx.ModelProto, wrt: str | Sequence[str] | None,
              frozen: str | Sequence[str] | None) -> list[str]:
    inputs = {i.name for i in model.graph.input}
    floats = float_initializers(model)
    if wrt is None:
        chosen = floats
    else:
        chosen = [name for entry in ([wrt] if isinstance(wrt, str) else wrt)
                  for name in ([entry] if entry in inputs else matching(floats, entry, "wrt"))]
    dropped = set() if frozen is None else set(matching(floats, frozen, "frozen"))
    return list(dict.fromkeys(name for name in chosen if name not in dropped))


def _values(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        values.update({v.name: v for v in node.outputs})
    return values


def _reverse(graph: ir.Graph, loss: ir.Value, targets: list[ir.Value], e: Emitter) -> dict[ir.Value, ir.Value]:
    forward = list(graph)  # topological order, before any backward node is appended
    needed = _on_a_path(forward, targets, loss)
    seed = e.op("ConstantOfShape", [e.shape(loss)], {"value": ir.tensor(np.ones(1, loss.dtype.numpy()))})
    grads: dict[ir.Value, ir.Value] = {loss: seed}  # d loss / d loss = 1
    for node in reversed(forward):
        if not any(v in needed for v in reads(node)):
            continue
        output_grads = [grads.get(v) for v in node.outputs]
        if all(g is None for g in output_grads):
            continue
        if next(subgraphs(node), None) is not None:
            raise UnsupportedOperator(through_control_flow(node, forward, targets, needed))
        if node.op_type not in RULES or node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperator(f"no gradient rule for {node.domain or 'ai.onnx'}::{node.op_type} "
                                      f"(node {node.name!r}); supported: {', '.join(supported())}")
        if node.op_type not in PARTIAL:
            output_grads = [g if g is not None or not v.dtype.is_floating_point() else _zeros_like(e, v)
                            for g, v in zip(output_grads, node.outputs)]
        for x, gx in zip(node.inputs, RULES[node.op_type](node, output_grads, e)):
            if gx is not None and x is not None and x in needed:
                grads[x] = gx if x not in grads else e.op("Add", [grads[x], gx])
    return grads


def _remove_unused(graph: ir.Graph, created: set[ir.Node]) -> None:
    """Drop backward nodes whose results nothing reads (a rule gives every input a gradient;
    only those on a path to a wanted gradient are computed)."""
    outputs = set(graph.outputs)
    for node in reversed(list(graph)):
        if node in created and not any(v.uses() or v in outputs for v in node.outputs):
            graph.remove(node, safe=True)


def _zeros_like(e: Emitter, v: ir.Value) -> ir.Value:
    return e.zeros(e.shape(v), v)


# Outputs that backward rules read, by operator: (index, dtype); added where a model leaves them out.
_EXPOSED = {"Dropout": (1, ir.DataType.BOOL), "MaxPool": (1, ir.DataType.INT64)}


def _expose_outputs(graph: ir.Graph) -> None:
    """Give Dropout nodes in training mode their mask and MaxPool nodes their indices."""
    for node in list(graph):
        if node.op_type not in _EXPOSED or node.domain not in ("", "ai.onnx"):
            continue
        index, dtype = _EXPOSED[node.op_type]
        inference_dropout = node.op_type == "Dropout" and (len(node.inputs) < 3 or node.inputs[2] is None)
        if len(node.outputs) > index or inference_dropout:
            continue
        wider = ir.Node("", node.op_type, list(node.inputs), attributes=list(node.attributes.values()),
                        num_outputs=index + 1, name=node.name)
        graph.insert_before(node, wider)
        for old, new in zip(node.outputs, wider.outputs):
            new.shape, new.type = old.shape, old.type
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            new.name = old.name  # the old node is removed next, freeing its names
        graph.remove(node, safe=True)
        extra = wider.outputs[index]
        extra.name, extra.type, extra.shape = f"{wider.outputs[0].name}/{node.op_type.lower()}_{index}", \
            ir.TensorType(dtype), wider.outputs[0].shape


def _on_a_path(nodes: list[ir.Node], sources: list[ir.Value], sink: ir.Value) -> set[ir.Value]:
    """Values that depend on a source and that the sink depends on (sources and sink included),
    through the inputs of nodes and the values their subgraphs read from the enclosing scope."""
    reached = set(sources)
    for node in nodes:
        if any(v in reached for v in reads(node)):
            reached.update(node.outputs)
    feeding = {sink}
    for node in reversed(nodes):
        if any(v in feeding for v in node.outputs):
            feeding.update(reads(node))
    return reached & feeding

