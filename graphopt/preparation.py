"""Edits that turn an inference model into one to train.

    model = normalized(model)                           # functions inlined, pinned opset and IR version
    model = weights_as_initializers(model)              # statistics and filled weights -> initializers
    chosen = select_trainable(model, trainable=["conv*"], frozen=["*.bias"])
    default = default_trainable(model, differentiable)  # the weights, not an exporter's constants
    model = promote_constants(model, ["W_const"])       # Constant / ConstantOfShape -> initializer
    model, buffers = to_training_mode(model)            # BatchNormalization and Dropout in training mode
    model = to_inference_mode(exported)                 # a training-mode export in inference mode
    model = infer_shapes(model)                         # without serializing the weights

`buffers` maps each running statistic of a BatchNormalization (an initializer) to the
output ``<name>.new`` that carries its value after a step, as torch updates
``running_mean`` and ``running_var`` in ``train()`` mode.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from graphopt import names
from graphopt.symbolic import IR_VERSION, OPSET

Selector = str | Sequence[str] | None

PARAMETERS = "graphopt.parameters"  # metadata_props key: the JSON list of a model's parameters (from_torch)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` in the form the rest of graphopt reads, computing the same function: its
    model-local functions inlined, converted to the pinned opset (`graphopt.symbolic.OPSET`), at
    the pinned IR version, and, for an IR version below 4 (where every initializer had to be
    listed as a graph input too), its initializers no longer listed as inputs. Returns ``model``
    itself when nothing changes. Run it before adding nodes of the pinned opset (a loss, training
    mode), which an older opset may not have."""
    model = inline_functions(model)
    if _opset(model) != OPSET:
        model = onnx.version_converter.convert_version(model, OPSET)
    if model.ir_version == IR_VERSION:
        return model
    result = _copy(model)
    if result.ir_version < 4:
        initializers = {t.name for t in result.graph.initializer}
        inputs = [i for i in result.graph.input if i.name not in initializers]
        del result.graph.input[:]
        result.graph.input.extend(inputs)
    result.ir_version = IR_VERSION
    return result


_FOLDABLE = frozenset({"Add", "Cast", "Ceil", "Concat", "Div", "Floor", "Gather", "Identity", "Mul", "Neg", "Reshape",
                       "Slice", "Squeeze", "Sub", "Unsqueeze"})
_FOLD_LIMIT = 64  # elements: shapes, scales and axes, never weights


def fold_constant_expressions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the standard nodes that compute a small tensor (at most 64 elements) from
    ``Constant`` nodes alone replaced by ``Constant`` nodes of their value: the scales of a
    Resize that TorchScript writes as a Concat of Constants, so that shape inference knows the
    Resize's output shape (convolution gradients need it). Initializers, which may be weights,
    are never folded in."""
    result = _copy(model)
    known: dict[str, np.ndarray] = {}
    folded = []
    for node in result.graph.node:
        value = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_value(node, _Constants(onnx.GraphProto()))
        elif (node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") and len(node.output) == 1
              and all(name in known for name in node.input if name)):
            value = _evaluate(node, known, _opset(model))
            if value is not None and value.size <= _FOLD_LIMIT:
                node = helper.make_node("Constant", [], list(node.output), value=numpy_helper.from_array(value))
        if value is not None and value.size <= _FOLD_LIMIT:
            known[node.output[0]] = value
        folded.append(node)
    del result.graph.node[:]
    result.graph.node.extend(folded)
    return result


def _evaluate(node: onnx.NodeProto, known: dict[str, np.ndarray], opset: int) -> np.ndarray | None:
    """``node``'s output from the values of its inputs, by onnx's reference evaluator."""
    inputs = [name for name in node.input if name]
    graph = helper.make_graph(
        [node], "fold", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(known[n].dtype), None)
                         for n in inputs],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)])
    try:
        evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        return np.asarray(evaluator.run(None, {n: known[n] for n in inputs})[0])
    except Exception:  # noqa: BLE001 - an expression the evaluator cannot run stays as it is
        return None


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its model-local functions (as exporters wrap modules in) inlined."""
    return onnx.inliner.inline_local_functions(model) if model.functions else model


def running_statistics(model: onnx.ModelProto) -> list[str]:
    """The initializers that BatchNormalization nodes read as running mean and variance."""
    return [name for n in model.graph.node if n.op_type == "BatchNormalization" for name in n.input[3:5]]


def select_trainable(model: onnx.ModelProto, trainable: Selector = None, frozen: Selector = None,
                     default: Sequence[str] | None = None) -> list[str]:
    """The float initializers to train, in model order: those matching ``trainable`` (names or
    ``fnmatch`` patterns; else ``default``, else all, running statistics excepted) less those
    matching ``frozen``."""
    floats = float_initializers(model)
    if trainable is None:
        chosen = floats if default is None else [name for name in floats if name in set(default)]
    else:
        chosen = matching(floats, trainable, "trainable")
    dropped = set() if frozen is None else set(matching(floats, frozen, "frozen"))
    return [name for name in chosen if name not in dropped]


def recorded_parameters(model: onnx.ModelProto) -> list[str] | None:
    """The parameters recorded in ``model.metadata_props`` under `PARAMETERS` (as
    `graphopt.from_torch` does: the module's trainable parameters), or None."""
    entry = next((e.value for e in model.metadata_props if e.key == PARAMETERS), None)
    if entry is None:
        return None
    recorded = json.loads(entry)
    if not isinstance(recorded, list) or not all(isinstance(name, str) for name in recorded):
        raise ValueError(f"model metadata {PARAMETERS!r} must be a JSON list of initializer names, got {entry[:200]!r}")
    return recorded


def default_trainable(model: onnx.ModelProto, differentiable: Sequence[str]) -> list[str]:
    """What a trainer trains when not told: of ``differentiable`` (the float initializers the
    loss depends on differentiably), the parameters the model records (`recorded_parameters`)
    if it records them, else all but `exporter_constants`."""
    recorded = recorded_parameters(model)
    if recorded is not None:
        kept = set(recorded)
        return [name for name in differentiable if name in kept]
    excluded = set(exporter_constants(model, differentiable))
    return [name for name in differentiable if name not in excluded]


def exporter_constants(model: onnx.ModelProto, among: Sequence[str] | None = None) -> list[str]:
    """The float initializers that look like constants an exporter folded, not weights:

    * scalars: tensors of rank 0 (``x * 0.25``, an epsilon, a scale), and tensors of one element
      that only Mul and Div nodes read (an attention's ``1/sqrt(d)``);
    * masks: tensors holding a non-finite value or one at the float type's extremes (an
      attention mask filled with ``-inf`` or the type's lowest value);
    * GroupNorm's helpers: the all-ones scale and all-zeros bias of an InstanceNormalization
      that normalizes a Reshape's output (torch's exporters build GroupNorm that way and apply
      the module's weight and bias after it).

    A learnable scalar (a 0-d temperature) is therefore not trained unless named. ``among``
    limits the search to those initializers (default: all)."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    found = set(_group_norm_helpers(model))
    wanted = None if among is None else set(among)
    for tensor in model.graph.initializer:
        floating = helper.tensor_dtype_to_np_dtype(tensor.data_type).kind == "f"
        if not floating or (wanted is not None and tensor.name not in wanted):
            continue
        value = numpy_helper.to_array(tensor)
        scalar = value.ndim == 0 or (value.size == 1 and readers.get(tensor.name, {""}) <= {"Mul", "Div"})
        masked = value.size and not np.all(np.abs(value) < np.finfo(value.dtype).max / 2)
        if scalar or masked:
            found.add(tensor.name)
    return [t.name for t in model.graph.initializer if t.name in found and (wanted is None or t.name in wanted)]


def _group_norm_helpers(model: onnx.ModelProto) -> list[str]:
    values = {t.name: t for t in model.graph.initializer}
    reshaped = {out for node in model.graph.node if node.op_type == "Reshape" for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "InstanceNormalization" or node.input[0] not in reshaped:
            continue
        scale, bias = (values.get(name) for name in node.input[1:3])
        if (scale is not None and bias is not None and np.all(numpy_helper.to_array(scale) == 1)
                and np.all(numpy_helper.to_array(bias) == 0)):
            found += [scale.name, bias.name]
    return found


def float_initializers(model: onnx.ModelProto) -> list[str]:
    """The float initializers, running statistics excepted, in model order."""
    stats = set(running_statistics(model))
    return [t.name for t in model.graph.initializer
            if helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f" and t.name not in stats]


def matching(candidates: list[str], selector: str | Sequence[str], what: str) -> list[str]:
    patterns = [selector] if isinstance(selector, str) else list(selector)
    matched = set()
    for pattern in patterns:
        hits = fnmatch.filter(candidates, pattern)
        if not hits:
            raise ValueError(f"{what}: {pattern!r} matches none of the candidate float initializers "
                             f"{candidates[:30]}")
        matched.update(hits)
    return [name for name in candidates if name in matched]


def implicit_initializers(model: onnx.ModelProto) -> list[str]:
    """The float Constant / ConstantOfShape outputs that stand for initializers, and that
    `weights_as_initializers` promotes unasked: those a BatchNormalization reads as running
    statistics (state that a training step updates), and every ConstantOfShape of a constant
    shape (a weight stored as its fill value, as in the files of ``onnx/backend/test/data/light``;
    constant folding would have made it an initializer)."""
    constants, stats, found = _Constants(model.graph), set(running_statistics(model)), []
    for node in model.graph.node:
        value = _constant_value(node, constants)
        if value is not None:
            constants.values[node.output[0]] = value
            if value.dtype.kind == "f" and (node.op_type == "ConstantOfShape" or node.output[0] in stats):
                found.append(node.output[0])
    return found


def weights_as_initializers(model: onnx.ModelProto, promote: bool | Sequence[str] = False) -> onnx.ModelProto:
    """``model`` with its `implicit_initializers` and the constants named by ``promote`` (True:
    every float Constant and ConstantOfShape of a constant shape; or a list of names) turned into
    initializers by `promote_constants`. Returns ``model`` itself when there are none."""
    if promote is True:
        return promote_constants(model, True)
    named = [promote] if isinstance(promote, str) else list(promote or ())
    which = [*implicit_initializers(model), *named]
    return promote_constants(model, which) if which else model


def promote_constants(model: onnx.ModelProto, which: bool | Sequence[str] = True) -> onnx.ModelProto:
    """``model`` with float Constant and ConstantOfShape (of a constant shape) outputs turned
    into initializers of the same name: all of them (``which=True``) or those named."""
    result = _copy(model)
    graph = result.graph
    which = True if which is True else set([which] if isinstance(which, str) else which or ())
    constants = _Constants(graph)
    promoted, kept = [], []
    for node in graph.node:
        value = _constant_value(node, constants)
        if value is not None:
            constants.values[node.output[0]] = value
        wanted = which is True or (which and node.output and node.output[0] in which)
        if value is not None and value.dtype.kind == "f" and wanted:
            promoted.append((node.output[0], value))
        else:
            kept.append(node)
    if which is not True and which:
        missing = sorted(set(which) - {name for name, _ in promoted})
        if missing:
            raise ValueError(f"promote_constants: {missing} are not outputs of float Constant or "
                             f"ConstantOfShape nodes with a constant shape")
    del graph.node[:]
    graph.node.extend(kept)
    for name, value in promoted:  # written once, straight into the model (weights may be GBs)
        graph.initializer.add(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype), dims=value.shape,
                              raw_data=value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
    return result


class _Constants:
    """Values known before run time: initializers (read when asked) and constant nodes' outputs."""

    def __init__(self, graph: onnx.GraphProto):
        self.initializers = {t.name: t for t in graph.initializer}
        self.values: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray | None:
        if name not in self.values and name in self.initializers:
            self.values[name] = numpy_helper.to_array(self.initializers[name])
        return self.values.get(name)


def _constant_value(node: onnx.NodeProto, constants: _Constants) -> np.ndarray | None:
    """The node's output if it is a Constant or a ConstantOfShape of a constant shape (a
    read-only broadcast view for the latter), else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        attr = node.attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.array(helper.get_attribute_value(attr), np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.array(helper.get_attribute_value(attr), np.int64)
    if node.op_type == "ConstantOfShape":
        shape = constants.get(node.input[0])
        if shape is not None:
            fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                        np.zeros(1, np.float32))
            return np.broadcast_to(fill.reshape(-1)[:1].reshape(()), tuple(shape.astype(np.int64)))
    return None


def to_training_mode(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` with BatchNormalization and Dropout nodes in training mode, and its buffers:
    ``{running statistic: output carrying its update}``."""
    result = _copy(model)
    graph = result.graph
    initializers = {t.name for t in graph.initializer}
    buffers: dict[str, str] = {}
    extra_nodes = []
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            _set_attribute(node, "training_mode", 1)
            while len(node.output) < 3:
                node.output.append(f"{node.output[0]}/running_{len(node.output)}")
            for stat, running in zip(node.input[3:5], node.output[1:3]):
                if stat not in initializers:
                    raise ValueError(f"BatchNormalization node {node.name!r}: its running statistic {stat!r} "
                                     f"must be an initializer")
                if stat in buffers:
                    raise ValueError(f"running statistic {stat!r} is shared by two BatchNormalization nodes")
                buffers[stat] = names.new(stat)
                extra_nodes.append(helper.make_node("Identity", [running], [names.new(stat)]))
        elif node.op_type == "Dropout" and (len(node.input) < 3 or not node.input[2]):
            while len(node.input) < 2:
                node.input.append("")
            if not node.input[1]:
                node.input[1] = _ensure(graph, "graphopt/dropout_ratio", np.array(0.5, np.float32))
            node.input[2:] = [_ensure(graph, "graphopt/training", np.array(True))]
    graph.node.extend(extra_nodes)
    graph.output.extend(helper.make_tensor_value_info(out, onnx.TensorProto.UNDEFINED, None)
                        for out in buffers.values())
    return result, buffers


def to_inference_mode(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with BatchNormalization (running statistics) and Dropout (identity) nodes in
    inference mode, what ``module.eval()`` computes: for a model exported in training mode."""
    result = _copy(model)
    read = {name for node in result.graph.node for name in node.input} | {o.name for o in result.graph.output}
    for node in result.graph.node:
        if node.op_type not in ("BatchNormalization", "Dropout"):
            continue
        used = [name for name in node.output[1:] if name in read]
        if used:
            raise ValueError(f"{node.op_type} node {node.name!r}: its training outputs {used} are read; "
                             f"it cannot run in inference mode")
        del node.output[1:]
        if node.op_type == "BatchNormalization":
            _set_attribute(node, "training_mode", 0)
        else:
            del node.input[2:]
    return result


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _ensure(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    if name not in {t.name for t in graph.initializer}:
        graph.initializer.append(numpy_helper.from_array(value, name))
    return name


_SMALL = 1024  # bytes: initializers up to this size stay in the copy shape inference reads (shape tensors)


def _nbytes(tensor: onnx.TensorProto) -> int:
    """The tensor's size from its dims (``ByteSize()`` walks the data: tens of ms for a large weight)."""
    return math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` without serializing the weights: initializers over
    1 KiB are stood in for by graph inputs of their type and shape while inference runs (it
    only reads the values of small integer tensors), then the result's types are put on a copy."""
    graph = model.graph
    small = {t.name for t in graph.initializer if _nbytes(t) <= _SMALL}
    listed = {i.name for i in graph.input}  # below IR 4, initializers are inputs too
    large = [t for t in graph.initializer if t.name not in small and t.name not in listed]
    light_graph = helper.make_graph(
        list(graph.node), graph.name,
        [*graph.input, *(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in large)],
        list(graph.output), [t for t in graph.initializer if t.name in small], value_info=list(graph.value_info))
    light = helper.make_model(light_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                              functions=list(model.functions))
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=data_prop).graph
    result = _copy(model)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.value_info)
    del result.graph.output[:]
    result.graph.output.extend(inferred.output)
    return result
