"""A Scan body as C++ statements: one local per value, in the body's (topological) node order.

A value is *uniform* (the same for every element: a scalar read from the outer graph, a constant,
or a node over those only), *elementwise* (depends on the element's inputs) or, in a reduction,
*per row* (depends on the row's ``ReduceSumSquare``). Uniform statements run once before the loop,
elementwise ones once per element, per-row ones once per row of the chunked model's ``K`` elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from graphopt.fused.cpp import cpp_type, literal
from graphopt.fused.errors import NotFusable
from graphopt.fused.ops import Operand, describe, translate

UNIFORM, ELEMENT, ROW = "uniform", "element", "row"


@dataclass
class Reduction:
    """The body's ``ReduceSumSquare``: the local it defines, its element type, the squared operand."""

    local: str
    elem_type: int
    operand: str


@dataclass
class Body:
    """A translated Scan body: its kernel inputs and outputs, and the statements of each kind."""

    elementwise: list[tuple[str, int]]  # (body input name, element type): the Scan's scan inputs, in order
    scalars: list[tuple[str, int]] = field(default_factory=list)  # (outer value name, element type)
    outputs: list[tuple[str, int, str]] = field(default_factory=list)  # (body output name, type, local)
    statements: dict[str, list[str]] = field(default_factory=lambda: {UNIFORM: [], ELEMENT: [], ROW: []})
    reduction: Reduction | None = None
    row_length: int = 0
    switches: list[str] = field(default_factory=list)  # uniform bool locals that choose a Where's operand


class _Values:
    """What each value name of the body is in the kernel: its operand and kind."""

    def __init__(self, outer_types: dict[str, int], outer_shapes: dict, initializers: dict, row_length: int):
        self.outer_types = outer_types
        self.outer_shapes = outer_shapes
        self.initializers = initializers
        self.row_length = row_length
        self.known: dict[str, tuple[Operand, str]] = {}

    def get(self, name: str, reader: str, body: Body) -> tuple[Operand, str]:
        """The operand ``name``; ``reader`` (what reads it, for messages) may make it a scalar input."""
        if name not in self.known:
            self.known[name] = self._outer(name, reader, body)
        return self.known[name]

    def _outer(self, name: str, reader: str, body: Body) -> tuple[Operand, str]:
        """An outer-scope value the body reads: a constant inlined, else a scalar kernel input."""
        if name in self.initializers:
            array = self.initializers[name]
            if array.size != 1:
                raise NotFusable(f"{reader} reads constant {name!r} of shape {list(array.shape)}; "
                                 "fused kernels inline scalar constants only")
            elem_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            cpp_type(elem_type, reader)
            return Operand(literal(array.reshape(()).item(), elem_type), elem_type, 1), UNIFORM
        if name not in self.outer_types:
            raise NotFusable(f"{reader} reads {name!r}, which is neither a body value nor a typed "
                             "outer value")
        shape = self.outer_shapes.get(name)
        if shape is None or any(d != 1 for d in shape):
            raise NotFusable(f"{reader} reads outer value {name!r} of shape {shape}; fused kernels "
                             "take scalars (one element) from the outer graph")
        elem_type = self.outer_types[name]
        cpp_type(elem_type, reader)
        local = f"s{len(body.scalars)}"
        body.scalars.append((name, elem_type))
        return Operand(local, elem_type, 1), UNIFORM


def translate_body(graph: onnx.GraphProto, outer_types: dict[str, int], outer_shapes: dict,
                   initializers: dict[str, np.ndarray], *, reduction: bool) -> Body:
    """``graph`` (a Scan body over rows) as a `Body`; `NotFusable` naming the first node it cannot take."""
    row_length = _row_length(graph)
    body = Body(elementwise=[], row_length=row_length)
    initializers = {**initializers, **{t.name: numpy_helper.to_array(t) for t in graph.initializer}}
    values = _Values(outer_types, outer_shapes, initializers, row_length)
    for k, value in enumerate(graph.input):
        elem_type = value.type.tensor_type.elem_type
        cpp_type(elem_type, f"Scan body input {value.name!r}")
        body.elementwise.append((value.name, elem_type))
        values.known[value.name] = (Operand(f"x{k}", elem_type, row_length), ELEMENT)
    for n, node in enumerate(graph.node):
        _statement(node, n, values, body, reduction)
    for value in graph.output:
        operand, kind = values.get(value.name, f"body output {value.name!r}", body)
        if reduction and kind == ELEMENT:
            raise NotFusable(f"reduction body output {value.name!r} is elementwise; expected one value per row")
        body.outputs.append((value.name, operand.elem_type, operand.expr))
    if reduction and (body.reduction is None or len(body.outputs) != 1 or body.outputs[0][1] != TensorProto.DOUBLE):
        raise NotFusable("the reduction body must have one ReduceSumSquare and one double output")
    return body


def _statement(node: onnx.NodeProto, n: int, values: _Values, body: Body, reduction: bool) -> None:
    if node.op_type == "Constant":
        raise NotFusable(f"{describe(node)}: Constant nodes in the body are not supported (graphopt hoists "
                         "constants to the outer graph)")
    operands, kinds = [], set()
    for name in node.input:
        if not name:
            operands.append(None)
            continue
        operand, kind = values.get(name, describe(node), body)
        operands.append(operand)
        kinds.add(kind)
    if node.op_type == "ReduceSumSquare":
        _reduce_sum_square(node, n, operands, kinds, values, body, reduction)
        return
    if {ELEMENT, ROW} <= kinds:
        raise NotFusable(f"{describe(node)} mixes elementwise values with a row's reduction")
    kind = ROW if ROW in kinds else ELEMENT if ELEMENT in kinds else UNIFORM
    expr, elem_type = translate(node, operands)
    if node.op_type == "Where" and kind == ELEMENT and operands[0].size == 1 and operands[0].expr.isidentifier() \
            and operands[0].expr not in body.switches:
        body.switches.append(operands[0].expr)
    local = f"v{n}"
    body.statements[kind].append(f"const {cpp_type(elem_type, describe(node))} {local} = {expr};")
    size = values.row_length if kind == ELEMENT else 1
    values.known[node.output[0]] = (Operand(local, elem_type, size), kind)


def _reduce_sum_square(node, n, operands, kinds, values: _Values, body: Body, reduction: bool) -> None:
    if not reduction:
        raise NotFusable(f"{describe(node)}: a reduction inside the update body is not elementwise")
    if body.reduction is not None:
        raise NotFusable(f"{describe(node)}: fused reductions take one ReduceSumSquare per body")
    keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    if len(operands) != 1 or keepdims != 0 or kinds != {ELEMENT}:
        raise NotFusable(f"{describe(node)}: expected ReduceSumSquare over a whole row (no axes, keepdims=0)")
    elem_type = operands[0].elem_type
    local = f"v{n}"
    body.reduction = Reduction(local, elem_type, operands[0].expr)
    values.known[node.output[0]] = (Operand(local, elem_type, 1), ROW)


def _row_length(graph: onnx.GraphProto) -> int:
    """The element count of each body input (a row); all must be equal and known."""
    sizes = set()
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise NotFusable(f"Scan body input {value.name!r} has a dimension unknown at build time")
        sizes.add(int(np.prod([d.dim_value for d in dims], dtype=np.int64)))
    if len(sizes) != 1:
        raise NotFusable(f"Scan body inputs have different element counts {sorted(sizes)}")
    return sizes.pop()
