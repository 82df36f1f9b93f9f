"""The rule registry and the helpers every rule module uses.

A rule receives the forward node, the gradient of each of its outputs and the
`Emitter`; it returns one gradient per input (None for inputs that are not
differentiable, such as shapes and axes). Outputs that do not reach the loss get a
zero gradient, unless the rule is registered with ``partial=True``, in which case it
receives None for them and decides itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

Rule = Callable[[ir.Node, list, "Emitter"], list]  # noqa: F821 - graphopt.autodiff.emitter.Emitter
RULES: dict[str, Rule] = {}
PARTIAL: set[str] = set()


def rule(*op_types: str, partial: bool = False) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
            if partial:
                PARTIAL.add(op_type)
        return fn
    return register


def supported() -> list[str]:
    return sorted(RULES)


def attribute(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def constant_input(node: ir.Node, index: int) -> np.ndarray | None:
    """The value of input ``index`` if it is an initializer or a Constant node's output."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    return constant_value(node.inputs[index], depth=0)


def folded_input(node: ir.Node, index: int) -> np.ndarray | None:
    """The value of the small input ``index`` (axes, scales, sizes) if it is known when the graph is
    built: `constant_input`, or what a few standard nodes compute from such values (torch's
    TorchScript exporter writes Resize scales as a Concat of Constants)."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    return constant_value(node.inputs[index], depth=4)


_SMALL = 64  # elements of an input worth folding
_CONSTANT_ATTRIBUTES = {"value": None, "value_float": np.float32, "value_floats": np.float32,
                        "value_int": np.int64, "value_ints": np.int64}


def constant_value(value: ir.Value, depth: int) -> np.ndarray | None:
    """``value``'s value if it is constant, folding up to ``depth`` levels of standard nodes of small
    constants."""
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.op_type == "Constant":
        name, attr = next(iter(producer.attributes.items()))
        if name not in _CONSTANT_ATTRIBUTES:
            return None
        dtype = _CONSTANT_ATTRIBUTES[name]
        return attr.value.numpy() if dtype is None else np.asarray(attr.value, dtype)
    if depth == 0 or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                         for a in producer.attributes.values()):
        return None
    inputs = [None if v is None else constant_value(v, depth - 1) for v in producer.inputs]
    if any(array is None or array.size > _SMALL for v, array in zip(producer.inputs, inputs) if v is not None):
        return None
    return _evaluate(producer, inputs)[value.index()]


def _evaluate(node: ir.Node, inputs: list) -> list[np.ndarray]:
    """``node`` run on the constant ``inputs`` by onnx's reference evaluator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if array is not None else "" for i, array in enumerate(inputs)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    proto = ir.serde.serialize_node(node)
    single = helper.make_node(node.op_type, names, outputs, domain="")
    single.attribute.extend(proto.attribute)
    graph = helper.make_graph([single], "fold", [], [helper.make_empty_tensor_value_info(o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in zip(names, inputs) if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ReferenceEvaluator(model).run(None, {})


def optional_input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def static_dims(value: ir.Value, node: ir.Node, what: str, start: int = 0) -> list[int]:
    """``value``'s dimensions from ``start`` on, which ``node``'s rule needs to know when the graph is built."""
    dims = list(value.shape)[start:] if known_rank(value, node, what) else []
    if not all(isinstance(d, int) for d in dims):
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: the gradient needs the static shape of "
                                  f"its {what} {value.name!r}, got {value.shape}")
    return dims


def known_rank(value: ir.Value, node: ir.Node, what: str) -> int:
    """``value``'s rank, which ``node``'s rule needs when the graph is built (where no run-time
    form of the rule exists): a clear error where shape inference could not find it."""
    if value.shape is None:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: the gradient needs the rank of its {what} "
                                  f"{value.name!r}, which shape inference could not determine (an operator of a "
                                  f"custom domain upstream?); give the model's values static ranks (value_info)")
    return len(value.shape)
