"""`Graph`: records nodes built from `Sym` values and lowers them to an ONNX model.

Every node is checked when it is built: operand dtypes must agree (weak scalars
excepted) and shapes must broadcast, else `GraphBuildError` is raised at the line
that built the node. The model is lowered through onnx-ir with the opset and IR
version pinned below, which the supported onnxruntime releases read.

Graphs nest: a *subgraph* (a Scan body) may use values of its ancestors. A node is
emitted into the innermost graph among its operands, so arithmetic on outer values
only (a bias correction, ``lr * lr_mult``, a cast of a hyperparameter) is hoisted
out of the body by construction and runs once per step, not once per chunk.
"""

from __future__ import annotations

import itertools
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
    """A graph under construction. Values are `Sym`; `to_model()` gives an `onnx.ModelProto`.

    With ``fuse=True`` the graph trades literal op order for fewer passes over tensors
    (results differ from the literal graph by rounding only), where ``s`` is a weak
    scalar and ``x``, ``y`` tensors:

    * scalar factors are folded: ``c * (s * x)`` -> ``(c * s) * x``, ``x / s`` ->
      ``(1 / s) * x``, ``-x`` -> ``(-1) * x``, ``(s * x) / y`` -> ``s * (x / y)``, the
      scalar products computed once; and for a scalar ``p`` known to be positive,
      ``sqrt(p * x)`` -> ``sqrt(p) * sqrt(x)``, ``p * x + c`` -> ``p * (x + c / p)``,
      ``y / (p * x)`` -> ``(1 / p) * (y / x)``;
    * ``s * x + y`` and ``y - s * x`` on ``[1, K]`` rows become one ``Gemm``, which
      ONNX Runtime's CPU provider computes in a single pass (unless ``x`` is an input
      marked ``written_in_place``).
    """

    def __init__(self, name: str = "graphopt", *, parent: Graph | None = None, fuse: bool = False):
        self.name = name
        self.parent = parent
        self.root: Graph = self if parent is None else parent.root
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.fuse = fuse
        self._nodes: list[ir.Node] = []
        self._inputs: list[ir.Value] = []
        self._outputs: list[tuple[str, Sym]] = []
        self._memo: dict[tuple, Sym] = {}  # emitted nodes by (op, input values, ...): values live with the graph
        self._written_in_place: set[ir.Value] = set()
        self._captured: dict[ir.Value, Graph] = {}  # values of ancestor graphs this graph reads -> their graph
        self._final = False
        if parent is None:
            self._initializers: list[ir.Value] = []
            self._constants: dict[tuple, Sym] = {}
            self._names: set[str] = set()
            self._counter = itertools.count()
            self._model: onnx.ModelProto | None = None

    def subgraph(self, name: str, *, fuse: bool | None = None) -> Graph:
        """A nested graph (a loop body) whose nodes may read this graph's values."""
        return Graph(name, parent=self, fuse=self.fuse if fuse is None else fuse)

    # -- interface ---------------------------------------------------------------

    def input(self, name: str, dtype: Any, shape: Shape = (), *, weak: bool = False,
              written_in_place: bool = False) -> Sym:
        """Declare a graph input.

        ``weak`` marks a scalar whose dtype yields to tensors. ``written_in_place`` marks
        a buffer that an output will overwrite: fusion then never makes it the ``B``
        operand of a ``Gemm``, which ONNX Runtime cannot compute in place.
        """
        self._claim(name)
        value = ir.val(name, to_ir(dtype), list(shape))
        self._inputs.append(value)
        if written_in_place:
            self._written_in_place.add(value)
        return Sym(self, value, dtype, shape, weak=weak)

    def output(self, name: str, sym: Sym) -> None:
        """Declare ``sym`` a graph output called ``name``."""
        self._check_reachable(sym, "output")
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
        names = self.root._names
        if not name or name in names:
            raise build_error("graph", f"name {name!r} is empty or already used by another input or output")
        names.add(name)

    def _fresh_name(self) -> str:
        while True:
            name = f"v{next(self.root._counter)}"
            if name not in self.root._names:
                self.root._names.add(name)
                return name

    def _check_open(self, role: str) -> None:
        if self._final or self.root._model is not None:
            raise build_error(role, f"graph {self.name!r} is already lowered; build a new Graph")

    def _is_ancestor_or_self(self, other: Graph) -> bool:
        graph: Graph | None = self
        while graph is not None:
            if graph is other:
                return True
            graph = graph.parent
        return False

    def _check_reachable(self, sym: Sym, role: str) -> None:
        if not self._is_ancestor_or_self(sym.graph):
            raise build_error(role, f"{sym!r} belongs to another graph (or to a nested one)")

    # -- values ------------------------------------------------------------------

    def constant(self, value: Any, dtype: Any = SCALAR_DTYPE, *, weak: bool | None = None) -> Sym:
        """A constant tensor (kept in the root graph); Python scalars become weak float64."""
        root = self.root
        array = np.asarray(value, dtype=dtype)
        if weak is None:
            weak = array.ndim == 0 and array.dtype == SCALAR_DTYPE
        key = (array.dtype.str, array.shape, array.tobytes(), weak)
        if key not in root._constants:
            tensor = ir.tensor(array, name=root._fresh_name())
            value_ = ir.Value(name=tensor.name, shape=ir.Shape(array.shape), type=ir.TensorType(to_ir(array.dtype)),
                              const_value=tensor)
            root._initializers.append(value_)
            constant = Sym(root, value_, array.dtype, array.shape, weak=weak)
            constant.positive = weak and bool(np.all(array > 0))
            root._constants[key] = constant
        return root._constants[key]

    def lift(self, x: Any) -> Sym:
        """A `Sym` as it is; a Python or numpy number as a weak constant."""
        if isinstance(x, Sym):
            return x
        if isinstance(x, (bool, int, float, np.number)):
            return self.constant(float(x))
        raise build_error("operand", f"expected a Sym or a number, got {type(x).__name__}")

    def cast(self, x: Sym, dtype: Any, *, weak: bool = False) -> Sym:
        """``x`` as ``dtype`` (a weak scalar if ``weak``), emitted once, in ``x``'s own graph."""
        dtype = np.dtype(dtype)
        if x.dtype == dtype and x.weak == weak:
            return x
        if weak and x.shape != ():
            raise build_error("Cast", f"only scalars can be weak, got shape {list(x.shape)}")
        if x.value.const_value is not None:  # fold: a constant of the new dtype, no Cast node
            return self.constant(x.value.const_value.numpy().astype(dtype), dtype, weak=weak)
        home = x.graph
        key = ("cast", x.value, dtype, weak)
        if key not in home._memo:
            home._memo[key] = home.op("Cast", [x], dtype=dtype, shape=x.shape, attributes={"to": to_ir(dtype)},
                                       weak=weak)
        return home._memo[key]

    def reshape(self, x: Sym, shape: Shape) -> Sym:
        """``x`` with a new static ``shape`` (same size), emitted once, in ``x``'s own graph."""
        if int(np.prod(shape)) != int(np.prod(x.shape)):
            raise build_error("Reshape", f"cannot reshape {list(x.shape)} to {list(shape)}")
        home = x.graph
        key = ("reshape", x.value, tuple(shape))
        if key not in home._memo:
            target = self.constant(np.array(shape, np.int64), np.int64, weak=False)
            home._memo[key] = home.op("Reshape", [x, target], dtype=x.dtype, shape=tuple(shape), weak=x.weak)
        return home._memo[key]

    # -- nodes -------------------------------------------------------------------

    def _innermost(self, op_type: str, syms: Sequence[Sym]) -> Graph:
        """The graph a node over ``syms`` belongs in: the deepest of theirs (all on one line)."""
        target = max((s.graph for s in syms), key=lambda g: g.depth, default=self)
        for s in syms:
            if not target._is_ancestor_or_self(s.graph):
                raise build_error(op_type, f"{s!r} belongs to another graph")
        return target

    def op(self, op_type: str, inputs: Sequence[Sym | None], *, dtype: Any, shape: Shape,
           attributes: dict[str, Any] | None = None, weak: bool = False) -> Sym:
        """Emit one node with a single output of the given dtype and shape (in this graph).

        Nodes are pure, so an identical node (same op, inputs and attributes) is
        emitted once and reused.
        """
        self._check_open(op_type)
        key = ("op", op_type, tuple(None if s is None else s.value for s in inputs),
               repr(sorted((attributes or {}).items())), np.dtype(dtype), tuple(shape), weak)
        if key in self._memo:
            return self._memo[key]
        for operand in inputs:
            if operand is not None:
                self._check_reachable(operand, op_type)
                if operand.graph is not self:
                    self._captured[operand.value] = operand.graph
        node = ir.Node("", op_type, [None if s is None else s.value for s in inputs],
                       attributes=ir.convenience.convert_attributes(attributes or {}), num_outputs=1)
        self._nodes.append(node)
        out = node.outputs[0]
        out.name = self._fresh_name()
        out.dtype = to_ir(dtype)
        out.shape = ir.Shape(list(shape))
        self._memo[key] = Sym(self, out, dtype, shape, weak=weak)
        return self._memo[key]

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
        """A broadcasting elementwise node (Add, Mul, Max, ...), in the innermost graph."""
        lifted = [self.lift(o) for o in operands]
        target = self._innermost(op_type, lifted)
        if target.fuse and result_dtype is None:
            fused = target._fused(op_type, lifted)
            if fused is not None:
                return fused
        syms, dtype, weak = self.unify(op_type, lifted)
        shape = broadcast_shapes(op_type, [s.shape for s in syms])
        if result_dtype is not None:
            dtype, weak = np.dtype(result_dtype), False
        out = target.op(op_type, syms, dtype=dtype, shape=shape, weak=weak)
        if op_type == "Mul" and len(lifted) == 2:
            out.scaled = _scalar_and_tensor(lifted[0], lifted[1])
        if weak:
            out.positive = _positive(op_type, lifted)
        return out

    def _fused(self, op_type: str, operands: list[Sym]) -> Sym | None:
        """The rewrite of ``fuse=True`` graphs for this node, or None (see the class docstring)."""
        if len(operands) != 2:
            return None
        a, b = operands
        if op_type == "Mul":
            pair = _scalar_and_tensor(a, b)
            if pair is not None and pair[1].scaled is not None:
                inner_scalar, x = pair[1].scaled
                return self.elementwise("Mul", pair[0] * inner_scalar, x)
        elif op_type == "Div" and b.weak and not a.weak:
            return self.elementwise("Mul", 1.0 / b, a)
        elif op_type == "Div" and not a.weak and not b.weak and (a.scaled or _positively_scaled(b)):
            numerator, factor = (a.scaled[1], a.scaled[0]) if a.scaled else (a, 1.0)
            if _positively_scaled(b):
                factor, b = factor / b.scaled[0], b.scaled[1]
            return self.elementwise("Mul", factor, self.elementwise("Div", numerator, b))
        elif op_type == "Add" and _positively_scaled(a) and b.weak:
            scale, x = a.scaled
            return self.elementwise("Mul", scale, self.elementwise("Add", x, b / scale))
        elif op_type in ("Add", "Sub"):
            candidates = [(a, b, 1.0), (b, a, 1.0)] if op_type == "Add" else [(b, a, -1.0)]
            for product, y, sign in candidates:
                if product.scaled is not None and _is_row(product.scaled[1]) and \
                        product.scaled[1].value not in product.scaled[1].graph._written_in_place and \
                        (y.shape == product.shape or y.weak):
                    scalar, x = product.scaled
                    factor = self.reshape(self.cast(sign * scalar, x.dtype), (1, 1))
                    addend = self.reshape(self.cast(y, x.dtype), (1, 1)) if y.weak else y
                    return self.op("Gemm", [factor, x, addend], dtype=x.dtype, shape=x.shape)
        return None

    def unary(self, op_type: str, x: Any, attributes: dict[str, Any] | None = None) -> Sym:
        x = self.lift(x)
        if x.graph.fuse and not x.weak:
            if op_type == "Neg":
                return x.graph.elementwise("Mul", -1.0, x)
            if op_type == "Sqrt" and _positively_scaled(x):
                scale, inner = x.scaled
                return x.graph.elementwise("Mul", self.unary("Sqrt", scale), self.unary("Sqrt", inner))
        out = x.graph.op(op_type, [x], dtype=x.dtype, shape=x.shape, attributes=attributes, weak=x.weak)
        out.positive = x.weak and op_type == "Sqrt" and x.positive
        return out

    def scan(self, body: Graph, scan_inputs: Sequence[Sym]) -> list[Sym]:
        """Run ``body`` once per row of ``scan_inputs`` (Scan over axis 0); return its stacked outputs.

        ``body``'s inputs are the rows (``scan_inputs[i].shape[1:]``); it may read any
        value of this graph directly. No state is carried between iterations.
        """
        if body.parent is not self:
            raise build_error("Scan", f"body {body.name!r} must be a subgraph of {self.name!r}")
        if len(scan_inputs) != len(body._inputs):
            raise build_error("Scan", f"body takes {len(body._inputs)} inputs, got {len(scan_inputs)}")
        rows = {s.shape[0] if s.shape else None for s in scan_inputs}
        for outer, inner in zip(scan_inputs, body._inputs):
            want = tuple(d if isinstance(d, int) else None for d in inner.shape.dims)
            if outer.shape[1:] != want or to_ir(outer.dtype) != inner.dtype:
                raise build_error("Scan", f"input {outer!r} does not stack rows of body input {inner.name!r} "
                                          f"({inner.dtype} {list(want)})")
        if len(rows) != 1:
            raise build_error("Scan", f"scan inputs have different numbers of rows: {sorted(map(str, rows))}")
        self._check_open("Scan")
        for s in scan_inputs:
            self._check_reachable(s, "Scan")
        lowered, outputs = body._lower()
        for value, owner in body._captured.items():  # what the body reads from above this graph,
            if owner is not self:                      # this graph reads too (through the Scan node)
                self._captured[value] = owner
        count = rows.pop()
        node_inputs = list(scan_inputs)
        node = ir.Node("", "Scan", [s.value for s in node_inputs],
                       attributes=[ir.AttrGraph("body", lowered), ir.AttrInt64("num_scan_inputs", len(node_inputs))],
                       num_outputs=len(outputs))
        node.meta["captured"] = list(body._captured)
        self._nodes.append(node)
        results = []
        for value, (_, sym) in zip(node.outputs, body._outputs):
            value.name = self._fresh_name()
            value.dtype = to_ir(sym.dtype)
            value.shape = ir.Shape([count, *sym.shape])
            results.append(Sym(self, value, sym.dtype, (count, *sym.shape)))
        return results

    # -- lowering ----------------------------------------------------------------

    def _lower(self) -> tuple[ir.Graph, list[ir.Value]]:
        """This graph as an `ir.Graph` (live nodes only); the graph is final afterwards."""
        nodes = list(self._nodes)
        outputs = []
        taken = {v.name for v in self._inputs}
        for name, sym in self._outputs:
            value = sym.value
            if sym.graph is not self or value.producer() is None or value.name in taken:
                node = ir.Node("", "Identity", [value], num_outputs=1)
                if sym.graph is not self:
                    self._captured[value] = sym.graph
                nodes.append(node)
                node.outputs[0].dtype, node.outputs[0].shape = value.dtype, value.shape
                value = node.outputs[0]
            value.name = name
            taken.add(name)
            outputs.append(value)
        nodes = _live_nodes(nodes, outputs)
        initializers = []
        if self.parent is None:
            used = {v for n in nodes for v in n.inputs if v is not None}
            used |= {v for n in nodes for v in n.meta.get("captured", ())}
            initializers = [v for v in self._initializers if v in used]
        self._final = True
        graph = ir.Graph(self._inputs, outputs, nodes=nodes, initializers=initializers,
                         opset_imports={"": OPSET} if self.parent is None else {}, name=self.name)
        return graph, outputs

    def to_model(self, doc_string: str | None = None) -> onnx.ModelProto:
        """Lower to a checked `onnx.ModelProto` (nodes no output depends on are dropped).

        Lowering is done once: the graph is final afterwards and later calls return
        the same model.
        """
        if self.parent is not None:
            raise build_error("graph", f"{self.name!r} is a subgraph; lower its root instead")
        if self._model is not None:
            return self._model
        graph, _ = self._lower()
        model = ir.Model(graph, ir_version=IR_VERSION, producer_name=PRODUCER, doc_string=doc_string)
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto, full_check=True)
        self._model = proto
        return proto


def _scalar_and_tensor(a: Sym, b: Sym) -> tuple[Sym, Sym] | None:
    """``(s, x)`` if one of ``a``, ``b`` is a weak scalar ``s`` and the other a tensor ``x``."""
    if a.weak and not b.weak:
        return a, b
    if b.weak and not a.weak:
        return b, a
    return None


def _positive(op_type: str, operands: Sequence[Sym]) -> bool:
    """Whether a weak scalar result is known positive from its operands."""
    if op_type in ("Mul", "Div"):
        return all(o.positive for o in operands)
    if op_type == "Max":
        return any(o.positive for o in operands)
    if op_type == "Add":
        return any(o.positive for o in operands) and all(o.positive or _is_nonnegative_constant(o) for o in operands)
    return False


def _is_nonnegative_constant(x: Sym) -> bool:
    return x.value.const_value is not None and bool(np.all(x.value.const_value.numpy() >= 0))


def _positively_scaled(x: Sym) -> bool:
    """``x`` is ``p * t`` for a weak scalar ``p`` known positive."""
    return x.scaled is not None and x.scaled[0].positive


def _is_row(x: Sym) -> bool:
    """A ``[1, K]`` tensor: the B operand of a ``Gemm`` whose A is a ``[1, 1]`` scalar."""
    return len(x.shape) == 2 and x.shape[0] == 1


def _live_nodes(nodes: list[ir.Node], outputs: list[ir.Value]) -> list[ir.Node]:
    """The nodes some output depends on (through inputs or a body's captured values), in order."""
    live: set[int] = set()
    stack = [v.producer() for v in outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(v.producer() for v in node.inputs if v is not None)
        stack.extend(v.producer() for v in node.meta.get("captured", ()))
    return [n for n in nodes if id(n) in live]
