"""The training-step model: forward, backward and update as one ONNX graph.

    step = build_training_step(model, loss="loss", groups=[GroupSpec(...)])

Trainable initializers become graph inputs; `graphopt.autodiff` adds their
gradients; the update model of `graphopt.update` is spliced in, reading those
gradients directly. Inputs: the model's inputs, the parameters, the buffers (running
statistics), then per parameter ``p`` its state slots ``p.<slot>`` and ``p.step``
(where the update reads it), and the hyperparameters ``group<g>.<hyper>`` -- the
names of `graphopt.names`. Outputs: the loss, ``<buffer>.new``, then ``p.new``,
``p.<slot>.new`` and ``p.step.new``. Plain onnxruntime runs it.

With a ``guard`` (`graphopt.update.guard`) the update is skipped inside the graph when a
gradient is not finite (output ``found_inf``); with its ``loss_scale``, the gradients are those
of ``loss * grad_scaler.scale`` (the loss output itself stays unscaled), unscaled before the
check, and the scale's new state is an output, as torch.amp.GradScaler does in three calls.
"""

from __future__ import annotations

from typing import Sequence

import onnx
import onnx_ir as ir

from graphopt import names
from graphopt.autodiff import add_gradients
from graphopt.update import GroupSpec, build_update
from graphopt.update.guard import SCALE, Guard


def build_training_step(model: onnx.ModelProto, loss: str, groups: Sequence[GroupSpec],
                        buffers: Sequence[str] = (), guard: Guard | None = None) -> onnx.ModelProto:
    """One model that computes ``loss`` and applies the update of ``groups`` to their parameters.

    ``buffers`` are initializers the model itself updates (the running statistics of
    `graphopt.preparation.to_training_mode`): inputs too, with outputs ``<name>.new``.
    """
    params = [p.name for group in groups for p in group.params]
    scaled = guard is not None and guard.loss_scale
    grad_model = build_gradients(model, loss, params, buffers, loss_scale=scaled)
    return _splice(grad_model, build_update(groups, guard=guard), params, [loss, *(names.new(b) for b in buffers)])


def build_gradients(model: onnx.ModelProto, loss: str, params: Sequence[str],
                    buffers: Sequence[str] = (), loss_scale: bool = False) -> onnx.ModelProto:
    """Forward and backward only. Inputs: the model's, then ``params`` and ``buffers``; outputs:
    ``loss``, ``<buffer>.new`` and ``<param>.grad`` (what gradient accumulation runs).

    With ``loss_scale``, the gradients are those of ``loss * grad_scaler.scale`` (a float32 input)."""
    model = trainable_as_inputs(model, [*params, *buffers])
    differentiated = _scaled_loss(model, loss) if loss_scale else loss
    grad_model = add_gradients(model, differentiated, params)
    kept = {loss, *(names.new(b) for b in buffers), *(names.grad(p) for p in params)}
    outputs = [o for o in grad_model.graph.output if o.name in kept]
    del grad_model.graph.output[:]
    grad_model.graph.output.extend(outputs)
    return grad_model


def trainable_as_inputs(model: onnx.ModelProto, params: Sequence[str]) -> onnx.ModelProto:
    """``model`` with the initializers named in ``params`` turned into graph inputs."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    initializers = {t.name: t for t in result.graph.initializer}
    missing = [p for p in params if p not in initializers]
    if missing:
        raise ValueError(f"trainable: {missing} are not initializers of the model "
                         f"(initializers: {sorted(initializers)[:20]})")
    kept = [t for t in result.graph.initializer if t.name not in set(params)]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept)
    existing = {i.name for i in result.graph.input}
    for name in params:
        if name not in existing:
            tensor = initializers[name]
            result.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, tensor.dims))
    return result


def _scaled_loss(model: onnx.ModelProto, loss: str) -> str:
    """Add ``<loss>.scaled = loss * cast(grad_scaler.scale)`` to ``model`` (in place); its name."""
    taken = {v.name for v in model.graph.input} | {o for n in model.graph.node for o in n.output}
    dtype = next((o.type.tensor_type.elem_type for o in model.graph.output if o.name == loss), None)
    if dtype is None:
        raise ValueError(f"loss scaling: {loss!r} is not an output of the model")
    cast, scaled = names.fresh(f"{SCALE}.as_loss", taken), names.fresh(f"{loss}.scaled", taken)
    model.graph.input.append(onnx.helper.make_tensor_value_info(SCALE, onnx.TensorProto.FLOAT, []))
    model.graph.node.extend([onnx.helper.make_node("Cast", [SCALE], [cast], to=dtype),
                             onnx.helper.make_node("Mul", [loss, cast], [scaled])])
    model.graph.output.append(onnx.helper.make_tensor_value_info(scaled, dtype, []))
    return scaled


def _splice(grad_model: onnx.ModelProto, update_model: onnx.ModelProto, params: list[str],
            kept: list[str]) -> onnx.ModelProto:
    """Move the update graph's nodes into the gradient graph, wiring parameters and gradients."""
    model = ir.serde.deserialize_model(grad_model)
    update = ir.serde.deserialize_model(update_model).graph
    graph = model.graph
    values = {v.name: v for v in graph.inputs}
    values.update({v.name: v for node in graph for v in node.outputs})
    wiring = {name: values[name] for name in params}
    wiring.update({names.grad(name): values[names.grad(name)] for name in params})
    wiring.update({v.name: v for v in graph.inputs if v.name == SCALE})  # read by both halves
    taken = set(values) | set(graph.initializers)
    for name, value in list(update.initializers.items()):  # constants: renamed apart, then moved
        update.initializers.pop(name)
        value.name = names.fresh(f"update/{name}", taken)
        graph.register_initializer(value)
    new_inputs = []
    for value in list(update.inputs):
        if value.name in wiring:
            value.replace_all_uses_with(wiring[value.name])
        else:
            new_inputs.append(value)
    outputs = list(update.outputs)
    update.inputs.clear()
    update.outputs.clear()
    node_names = {node.name for node in graph}
    for node in list(update):
        update.remove(node)
        node.name = names.fresh(f"update/{node.name or node.op_type}", node_names)
        for out in node.outputs:
            if out.name in taken:
                out.name = names.fresh(f"update/{out.name}", taken)
            taken.add(out.name)
        graph.append(node)
    graph.inputs.extend(new_inputs)
    by_name = {v.name: v for v in graph.outputs}
    kept_outputs = [by_name[name] for name in kept]
    graph.outputs.clear()
    graph.outputs.extend(kept_outputs + outputs)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto
