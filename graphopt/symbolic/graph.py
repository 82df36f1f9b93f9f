"""`Graph`: records nodes built from `Sym` values and lowers them to an ONNX model.

Every node is checked when it is built: operand dtypes must agree (weak scalars
excepted) and shapes must broadcast, else `GraphBuildError` is raised at the line
that built the node. The model is lowered through onnx-ir with the opset and IR
version pinned below, which the supported onnxruntime releases read.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.symbolic.dtypes import SCALAR_DTYPE, to_ir
from graphopt.symbolic.errors import build_error
from graphopt.symbolic.value import Shape, Sym

OPSET = 21
IR_VERSION = 10
PRODUCER = "graphopt"


def broadcast_shapes(op_type: str, shapes: Sequence[Shape]) -> Shape:
    """numpy broadcasting of static shapes; ``None`` is a dimension unknown at build time."""
    rank = max((len(s) for s in shapes), default=0)
    result = []
    for axis in range(-rank, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis}
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise build_error(op_type, f"shapes {[list(s) for s in shapes]} do not broadcast")
        if known:
            result.append(known.pop())
        elif None in dims:
            result.append(None)
        else:
            result.append(1)
    return tuple(result)


class Graph:
    """A graph under construction. Values are `Sym`; `to_model()` gives an `onnx.ModelProto`."""

    def __init__(self, name: str = "graphopt"):
        self.name = name
        self._nodes: list[ir.Node] = []
        self._inputs: list[ir.Value] = []
        self._outputs: list[tuple[str, Sym]] = []
        self._initializers: list[ir.Value] = []
        self._constants: dict[tuple, Sym] = {}
        self._casts: dict[tuple[ir.Value, np.dtype, bool], Sym] = {}  # values live as long as the graph
        self._names: set[str] = set()
        self._model: onnx.ModelProto | None = None  # set by to_model(); the graph is then final

    # -- interface ---------------------------------------------------------------

    def input(self, name: str, dtype: Any, shape: Shape = (), *, weak: bool = False) -> Sym:
        """Declare a graph input. ``weak`` marks a scalar whose dtype yields to tensors."""
        self._claim(name)
        value = ir.val(name, to_ir(dtype), list(shape))
        self._inputs.append(value)
        return Sym(self, value, dtype, shape, weak=weak)

    def output(self, name: str, sym: Sym) -> None:
        """Declare ``sym`` a graph output called ``name``."""
        self._check_own(sym, "output")
        self._claim(name)
        self._outputs.append((name, sym))

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self._outputs]

    def _claim(self, name: str) -> None:
        self._check_open("graph")
        if not name or name in self._names:
            raise build_error("graph", f"name {name!r} is empty or already used by another input or output")
        self._names.add(name)

    # -- values ------------------------------------------------------------------

    def constant(self, value: Any, dtype: Any = SCALAR_DTYPE, *, weak: bool | None = None) -> Sym:
        """A constant tensor; Python scalars become weak float64 constants by default."""
        array = np.asarray(value, dtype=dtype)
        if weak is None:
            weak = array.ndim == 0 and array.dtype == SCALAR_DTYPE
        key = (array.dtype.str, array.shape, array.tobytes(), weak)
        if key not in self._constants:
            tensor = ir.tensor(array, name=f"const_{len(self._constants)}")
            value_ = ir.Value(name=tensor.name, shape=ir.Shape(array.shape), type=ir.TensorType(to_ir(array.dtype)),
                              const_value=tensor)
            self._initializers.append(value_)
            self._constants[key] = Sym(self, value_, array.dtype, array.shape, weak=weak)
        return self._constants[key]

    def lift(self, x: Any) -> Sym:
        """A `Sym` of this graph as it is; a Python or numpy number as a weak constant."""
        if isinstance(x, Sym):
            self._check_own(x, "operand")
            return x
        if isinstance(x, (bool, int, float, np.number)):
            return self.constant(float(x))
        raise build_error("operand", f"expected a Sym or a number, got {type(x).__name__}")

    def _check_open(self, role: str) -> None:
        if self._model is not None:
            raise build_error(role, "the graph was already lowered with to_model(); build a new Graph")

    def _check_own(self, sym: Sym, role: str) -> None:
        if sym.graph is not self:
            raise build_error(role, f"{sym!r} belongs to another graph")

    def cast(self, x: Sym, dtype: Any, *, weak: bool = False) -> Sym:
        """``x`` as ``dtype`` (a weak scalar if ``weak``); each cast is emitted once."""
        dtype = np.dtype(dtype)
        if x.dtype == dtype and x.weak == weak:
            return x
        if weak and x.shape != ():
            raise build_error("Cast", f"only scalars can be weak, got shape {list(x.shape)}")
        if x.value.const_value is not None:  # fold: a constant of the new dtype, no Cast node
            return self.constant(x.value.const_value.numpy().astype(dtype), dtype, weak=weak)
        key = (x.value, dtype, weak)
        if key not in self._casts:
            self._casts[key] = self.op("Cast", [x], dtype=dtype, shape=x.shape, attributes={"to": to_ir(dtype)},
                                       weak=weak)
        return self._casts[key]

    # -- nodes -------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[Sym | None], *, dtype: Any, shape: Shape,
           attributes: dict[str, Any] | None = None, weak: bool = False) -> Sym:
        """Emit one node with a single output of the given dtype and shape."""
        self._check_open(op_type)
        for operand in inputs:
            if operand is not None:
                self._check_own(operand, op_type)
        node = ir.Node("", op_type, [None if s is None else s.value for s in inputs],
                       attributes=ir.convenience.convert_attributes(attributes or {}), num_outputs=1)
        self._nodes.append(node)
        out = node.outputs[0]
        out.dtype = to_ir(dtype)
        out.shape = ir.Shape(list(shape))
        return Sym(self, out, dtype, shape, weak=weak)

    def unify(self, op_type: str, operands: Sequence[Any]) -> tuple[list[Sym], np.dtype, bool]:
        """Lift operands and bring them to one dtype; weak scalars yield to strong tensors."""
        syms = [self.lift(o) for o in operands]
        strong = {s.dtype for s in syms if not s.weak}
        if len(strong) > 1:
            names = ", ".join(f"{s!r}" for s in syms)
            raise build_error(op_type, f"operands have different dtypes ({names}); cast one explicitly")
        if not strong:
            return syms, SCALAR_DTYPE, True
        dtype = strong.pop()
        return [self.cast(s, dtype) if s.weak else s for s in syms], dtype, False

    def elementwise(self, op_type: str, *operands: Any, result_dtype: Any = None) -> Sym:
        """A broadcasting elementwise node (Add, Mul, Max, Where's value operands, ...)."""
        syms, dtype, weak = self.unify(op_type, operands)
        shape = broadcast_shapes(op_type, [s.shape for s in syms])
        if result_dtype is not None:
            dtype, weak = np.dtype(result_dtype), False
        return self.op(op_type, syms, dtype=dtype, shape=shape, weak=weak)

    def unary(self, op_type: str, x: Any, attributes: dict[str, Any] | None = None) -> Sym:
        x = self.lift(x)
        return self.op(op_type, [x], dtype=x.dtype, shape=x.shape, attributes=attributes, weak=x.weak)

    # -- lowering ----------------------------------------------------------------

    def to_model(self, doc_string: str | None = None) -> onnx.ModelProto:
        """Lower to a checked `onnx.ModelProto` (nodes no output depends on are dropped).

        Lowering is done once: the graph is final afterwards and later calls return
        the same model.
        """
        if self._model is not None:
            return self._model
        nodes = list(self._nodes)
        outputs = []
        taken = {v.name for v in self._inputs} | {v.name for v in self._initializers}
        for name, sym in self._outputs:
            value = sym.value
            if value.producer() is None or value.name in taken:
                node = ir.Node("", "Identity", [value], num_outputs=1)
                nodes.append(node)
                node.outputs[0].dtype, node.outputs[0].shape = value.dtype, value.shape
                value = node.outputs[0]
            value.name = name
            taken.add(name)
            outputs.append(value)
        nodes = _live_nodes(nodes, outputs)
        used = {id(v) for n in nodes for v in n.inputs if v is not None}
        initializers = [v for v in self._initializers if id(v) in used]
        graph = ir.Graph(self._inputs, outputs, nodes=nodes, initializers=initializers,
                         opset_imports={"": OPSET}, name=self.name)
        model = ir.Model(graph, ir_version=IR_VERSION, producer_name=PRODUCER, doc_string=doc_string)
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto, full_check=True)
        self._model = proto
        return proto


def _live_nodes(nodes: list[ir.Node], outputs: list[ir.Value]) -> list[ir.Node]:
    """The nodes some output depends on, in their original (topological) order."""
    live: set[int] = set()
    stack = [v.producer() for v in outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(v.producer() for v in node.inputs if v is not None)
    return [n for n in nodes if id(n) in live]
