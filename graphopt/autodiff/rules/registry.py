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
    value = node.inputs[index]
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


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
