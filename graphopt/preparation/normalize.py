"""The form the rest of graphopt reads: functions inlined, the pinned opset and IR version, small
constant expressions folded."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from graphopt.preparation.constants import Constants, constant_value
from graphopt.preparation.copying import copied
from graphopt.symbolic import IR_VERSION, OPSET


def normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` in the form the rest of graphopt reads, computing the same function: its
    model-local functions inlined, converted to the pinned opset (`graphopt.symbolic.OPSET`), at
    the pinned IR version, and, for an IR version below 4 (where every initializer had to be
    listed as a graph input too), its initializers no longer listed as inputs. Returns ``model``
    itself when nothing changes. Run it before adding nodes of the pinned opset (a loss, training
    mode), which an older opset may not have."""
    model = inline_functions(model)
    if opset_of(model) != OPSET:
        model = onnx.version_converter.convert_version(model, OPSET)
    if model.ir_version == IR_VERSION:
        return model
    result = copied(model)
    if result.ir_version < 4:
        initializers = {t.name for t in result.graph.initializer}
        inputs = [i for i in result.graph.input if i.name not in initializers]
        del result.graph.input[:]
        result.graph.input.extend(inputs)
    result.ir_version = IR_VERSION
    return result


def opset_of(model: onnx.ModelProto) -> int:
    """The model's ``ai.onnx`` opset version (the pinned one if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its model-local functions (as exporters wrap modules in) inlined."""
    return onnx.inliner.inline_local_functions(model) if model.functions else model


_FOLDABLE = frozenset({"Add", "Cast", "Ceil", "Concat", "Div", "Floor", "Gather", "Identity", "Mul", "Neg", "Reshape",
                       "Slice", "Squeeze", "Sub", "Unsqueeze"})

_FOLD_LIMIT = 64  # elements: shapes, scales and axes, never weights


def fold_constant_expressions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the standard nodes that compute a small tensor (at most 64 elements) from
    ``Constant`` nodes alone replaced by ``Constant`` nodes of their value: the scales of a
    Resize that TorchScript writes as a Concat of Constants, so that shape inference knows the
    Resize's output shape (convolution gradients need it). Initializers, which may be weights,
    are never folded in."""
    result = copied(model)
    known: dict[str, np.ndarray] = {}
    folded = []
    for node in result.graph.node:
        value = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_value(node, Constants(onnx.GraphProto()))
        elif (node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") and len(node.output) == 1
              and all(name in known for name in node.input if name)):
            value = _evaluate(node, known, opset_of(model))
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
