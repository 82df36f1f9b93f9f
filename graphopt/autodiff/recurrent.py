"""Recurrent nodes (``LSTM``, ``GRU``, ``RNN``) unrolled over time into primitive operators,
so that the reverse pass differentiates them with the rules it has.

    expand_recurrent(ir_model, needed)  # before the reverse pass; None: every recurrent node

A recurrent node with an output in ``needed`` (on a path from a differentiated tensor to the
loss) is replaced, in place, by MatMul, Add, Split, Sigmoid / Tanh / Relu, Mul, Where and
Concat nodes, one cell per time step; the sequence length must therefore be static. Other
recurrent nodes keep onnxruntime's kernel. The equations, per direction, with ``f, g, h``
the node's activations (defaults: Sigmoid, Tanh, Tanh), ``(.)`` the elementwise product and
``W`` ``[directions, G*hidden, input]``, ``R`` ``[directions, G*hidden, hidden]`` and ``B``
``[directions, 2*G*hidden] = Wb || Rb`` stacking the G gates in ONNX order:

    RNN  (G=1):   H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)
    LSTM (G=4, gates i o f c):
                  i = f(X_t Wi^T + H_{t-1} Ri^T + Wbi + Rbi)      (likewise o, f with f; c~ with g)
                  C_t = f_t (.) C_{t-1} + i (.) c~
                  H_t = o (.) h(C_t)
    GRU  (G=3, gates z r h):
                  z = f(X_t Wz^T + H_{t-1} Rz^T + Wbz + Rbz)      (likewise r)
                  h~ = g(X_t Wh^T + (r (.) H_{t-1}) Rh^T + Rbh + Wbh)        linear_before_reset = 0
                  h~ = g(X_t Wh^T + r (.) (H_{t-1} Rh^T + Rbh) + Wbh)        linear_before_reset = 1
                  H_t = (1 - z) (.) h~ + z (.) H_{t-1}

The reverse direction runs t = T-1 .. 0. With ``sequence_lens`` L, a step t >= L_b leaves
batch row b's state as it was and writes zeros to Y, so Y_h and Y_c hold the last valid state
(and the reverse direction starts at L_b - 1). ``initial_h`` / ``initial_c`` default to zeros.
``layout`` 1 (batch first) is transposed to layout 0 on the way in and back on the way out.
Peepholes ``P``, ``clip``, ``input_forget`` = 1, ``activation_alpha`` / ``activation_beta`` and
activations other than Sigmoid, Tanh and Relu raise an error naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import attribute, optional_input

GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
_DIRECTIONS = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}


def expand_recurrent(model: ir.Model, needed: set[ir.Value] | None = None) -> bool:
    """Unroll the recurrent nodes of ``model``'s graph that have an output in ``needed`` (all of
    them if None), then infer the shapes of what was emitted. Whether any node was unrolled."""
    graph = model.graph
    chosen = [node for node in graph if node.op_type in GATES and node.domain in ("", "ai.onnx")
              and (needed is None or any(v in needed for v in node.outputs))]
    created: list[ir.Value] = []
    for node in chosen:
        created += _replace(graph, node)
    if chosen:
        ShapeInferencePass(data_prop=True)(model)
        untyped = [v.name for v in created if v.shape is None]
        if untyped:
            raise RuntimeError(f"shape inference failed on the unrolled recurrent nodes "
                               f"{[n.name for n in chosen]}: no shape for {untyped[:5]}")
    return bool(chosen)


def _replace(graph: ir.Graph, node: ir.Node) -> list[ir.Value]:
    """Put ``node``'s unrolled equivalent in its place; the values it created."""
    e = Emitter(graph, prefix=f"{node.name or node.op_type}/unrolled")
    outputs = _unroll(node, e)
    results = set(outputs.values())
    nodes = []
    for n in reversed([n for n in graph if n in e.created]):
        used = any(v.uses() or v in results for v in n.outputs)  # else a part no use of the node needs
        graph.remove(n, safe=not used)
        if used:
            nodes.insert(0, n)
    graph.insert_before(node, nodes)
    for index, new in outputs.items():
        old = node.outputs[index]
        new.shape, new.type = old.shape, old.type
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        new.name = old.name  # the old node is removed next, freeing its names
    graph.remove(node, safe=True)
    return [v for n in nodes for v in n.outputs]


class _Spec:
    """A recurrent node's attributes, checked: what the unrolled graph supports or an error."""

    def __init__(self, node: ir.Node):
        self.node, self.kind = node, node.op_type
        for name in ("clip", "activation_alpha", "activation_beta"):
            if name in node.attributes:
                self._unsupported(f"attribute {name!r}")
        if attribute(node, "input_forget", 0):
            self._unsupported("input_forget=1")
        if self.kind == "LSTM" and optional_input(node, 7) is not None:
            self._unsupported("peephole weights P")
        direction = attribute(node, "direction", "forward")
        if direction not in _DIRECTIONS:
            raise ValueError(f"{self.kind} node {node.name!r}: unknown direction {direction!r}")
        self.reverse = _DIRECTIONS[direction]
        self.layout = int(attribute(node, "layout", 0))
        if self.layout not in (0, 1):
            raise ValueError(f"{self.kind} node {node.name!r}: layout must be 0 or 1, got {self.layout}")
        self.dtype = node.inputs[0].dtype.numpy()
        self.linear_before_reset = int(attribute(node, "linear_before_reset", 0))
        self.hidden = self._hidden_size()
        self.steps = self._steps()
        self.activations = self._activations()

    def _unsupported(self, what: str):
        raise NotImplementedError(f"{self.kind} node {self.node.name!r}: {what} is not supported by the gradient "
                                  f"of recurrent nodes (activations Sigmoid, Tanh, Relu; no clip, input_forget, "
                                  f"peepholes P, activation_alpha/beta)")

    def _hidden_size(self) -> int:
        hidden = attribute(self.node, "hidden_size")
        r = self.node.inputs[2]
        if hidden is None and r.shape is not None and isinstance(r.shape[-1], int):
            hidden = r.shape[-1]
        if hidden is None:
            raise NotImplementedError(f"{self.kind} node {self.node.name!r}: no hidden_size attribute and "
                                      f"no static shape of R {r.name!r}")
        return int(hidden)

    def _steps(self) -> int:
        x = self.node.inputs[0]
        dims = None if x.shape is None else list(x.shape)
        if dims is None or len(dims) != 3 or not isinstance(dims[self.layout], int):
            raise NotImplementedError(f"{self.kind} node {self.node.name!r}: the gradient unrolls the recurrence, "
                                      f"so the sequence length (axis {self.layout} of X {x.name!r}) must be "
                                      f"static, got shape {x.shape}")
        return dims[self.layout]

    def _activations(self) -> list[list[str]]:
        """The activation operators of each direction."""
        names = list(attribute(self.node, "activations", _DEFAULT_ACTIVATIONS[self.kind]))
        per = len(_DEFAULT_ACTIVATIONS[self.kind])
        if len(names) == per:
            names = names * len(self.reverse)
        if len(names) != per * len(self.reverse):
            raise ValueError(f"{self.kind} node {self.node.name!r}: expected {per * len(self.reverse)} "
                             f"activations, got {names}")
        unknown = [a for a in names if a.lower() not in _ACTIVATIONS]
        if unknown:
            self._unsupported(f"activation {unknown[0]!r} (supported: Sigmoid, Tanh, Relu)")
        ops = [_ACTIVATIONS[a.lower()] for a in names]
        return [ops[i:i + per] for i in range(0, len(ops), per)]


def _unroll(node: ir.Node, e: Emitter) -> dict[int, ir.Value]:
    """The node's outputs that something reads, by output index, computed step by step."""
    spec = _Spec(node)
    x, w, r = node.inputs[:3]
    b, lengths, h0, c0 = (optional_input(node, i) for i in (3, 4, 5, 6))
    if spec.layout:  # batch first: [batch, seq, ...] to [seq, batch, ...], states [batch, dirs, h] to [dirs, batch, h]
        x, h0, c0 = (None if v is None else e.op("Transpose", [v], {"perm": [1, 0, 2]}) for v in (x, h0, c0))
    dirs = len(spec.reverse)
    zeros = e.zeros(e.op("Concat", [e.shape(x, 1, 2), e.ints([spec.hidden])], {"axis": 0}), node.inputs[0])
    h0s = _unstack(e, h0, 0, dirs) if h0 is not None else [zeros] * dirs
    c0s = _unstack(e, c0, 0, dirs) if c0 is not None else [zeros] * dirs
    masks = None
    if lengths is not None:
        masks = [e.op("Unsqueeze", [e.op("Less", [e.constant(np.array(t, np.int32)), lengths]), e.ints([1])])
                 for t in range(spec.steps)]
    ws, rs = _unstack(e, w, 0, dirs), _unstack(e, r, 0, dirs)
    bs = _unstack(e, b, 0, dirs) if b is not None else [None] * dirs
    ys, hs, cs = [], [], []
    for d in range(dirs):
        y, h, c = _direction(spec, e, x, ws[d], rs[d], bs[d], h0s[d], c0s[d], masks, d)
        ys.append(e.op("Concat", [e.op("Unsqueeze", [v, e.ints([0, 1])]) for v in y], {"axis": 0}))
        hs.append(h)
        cs.append(c)
    results = {0: _concat(e, ys, 1), 1: _stack(e, hs), 2: _stack(e, cs) if spec.kind == "LSTM" else None}
    if spec.layout:
        results = {0: e.op("Transpose", [results[0]], {"perm": [2, 0, 1, 3]}),
                   **{i: e.op("Transpose", [v], {"perm": [1, 0, 2]}) for i, v in results.items() if i and v}}
    graph_outputs = set(e.graph.outputs)
    return {i: results[i] for i, v in enumerate(node.outputs)
            if v is not None and results.get(i) is not None and (v.uses() or v in graph_outputs)}


def _direction(spec: _Spec, e: Emitter, x, w, r, b, h, c, masks, d: int):
    """One direction over all steps: its outputs per step, its last state H and C."""
    wb, rb = e.op("Split", [b], {"axis": 0, "num_outputs": 2}, num_outputs=2) if b is not None else (None, None)
    recurrent_bias = rb if spec.kind == "GRU" and spec.linear_before_reset else None
    input_bias = wb if recurrent_bias is not None or wb is None else e.op("Add", [wb, rb])
    xw = e.op("MatMul", [x, e.op("Transpose", [w], {"perm": [1, 0]})])  # all steps at once: [seq, batch, G*hidden]
    if input_bias is not None:
        xw = e.op("Add", [xw, input_bias])
    xs = _unstack(e, xw, 0, spec.steps)
    cell = _CELLS[spec.kind](spec, e, r, recurrent_bias, spec.activations[d])
    zero = e.constant(np.zeros((), spec.dtype))  # a constant: CastLike would put x on its path
    ys: list[ir.Value] = [None] * spec.steps
    order = range(spec.steps - 1, -1, -1) if spec.reverse[d] else range(spec.steps)
    for t in order:
        h_new, c_new = cell(xs[t], h, c)
        if masks is None:
            ys[t], h, c = h_new, h_new, c_new
        else:  # past a row's length: keep its state, write zeros
            ys[t] = e.op("Where", [masks[t], h_new, zero])
            h = e.op("Where", [masks[t], h_new, h])
            c = e.op("Where", [masks[t], c_new, c]) if c_new is not None else None
    return ys, h, c


def _rnn_cell(spec, e, r, _bias, acts):
    """``H_t = f(XW_t + H_{t-1} R^T)`` (the biases are in XW_t)."""
    r_t = e.op("Transpose", [r], {"perm": [1, 0]})

    def step(xw, h, _c):
        return e.op(acts[0], [e.op("Add", [xw, e.op("MatMul", [h, r_t])])]), None
    return step


def _lstm_cell(spec, e, r, _bias, acts):
    """Gates ``i, o, f, c~`` from ``XW_t + H_{t-1} R^T``; ``C_t = f C_{t-1} + i c~``, ``H_t = o h(C_t)``."""
    f, g, h_act = acts
    r_t = e.op("Transpose", [r], {"perm": [1, 0]})

    def step(xw, h, c):
        i, o, forget, cand = e.op("Split", [e.op("Add", [xw, e.op("MatMul", [h, r_t])])],
                                  {"axis": 1, "num_outputs": 4}, num_outputs=4)
        c_new = e.op("Add", [e.op("Mul", [e.op(f, [forget]), c]), e.op("Mul", [e.op(f, [i]), e.op(g, [cand])])])
        return e.op("Mul", [e.op(f, [o]), e.op(h_act, [c_new])]), c_new
    return step


def _gru_cell(spec, e, r, bias, acts):
    """Gates ``z, r`` from ``XW_t + H_{t-1} R^T``; the candidate ``h~`` by ``linear_before_reset``;
    ``H_t = h~ + z (H_{t-1} - h~)``. ``bias`` is Rb when it goes inside the reset product."""
    f, g = acts
    hidden = spec.hidden
    sizes = e.ints([2 * hidden, hidden])
    r_zr, r_h = e.op("Split", [r, sizes], {"axis": 0}, num_outputs=2)
    r_t = e.op("Transpose", [r], {"perm": [1, 0]})
    r_zr_t, r_h_t = (e.op("Transpose", [v], {"perm": [1, 0]}) for v in (r_zr, r_h))

    def step(xw, h, _c):
        x_zr, x_h = e.op("Split", [xw, sizes], {"axis": 1}, num_outputs=2)
        if spec.linear_before_reset:
            hr = e.op("MatMul", [h, r_t])
            if bias is not None:
                hr = e.op("Add", [hr, bias])
            h_zr, h_h = e.op("Split", [hr, sizes], {"axis": 1}, num_outputs=2)
            z, reset = e.op("Split", [e.op(f, [e.op("Add", [x_zr, h_zr])])], {"axis": 1, "num_outputs": 2},
                            num_outputs=2)
            cand = e.op(g, [e.op("Add", [x_h, e.op("Mul", [reset, h_h])])])
        else:
            z, reset = e.op("Split", [e.op(f, [e.op("Add", [x_zr, e.op("MatMul", [h, r_zr_t])])])],
                            {"axis": 1, "num_outputs": 2}, num_outputs=2)
            cand = e.op(g, [e.op("Add", [x_h, e.op("MatMul", [e.op("Mul", [reset, h]), r_h_t])])])
        return e.op("Add", [cand, e.op("Mul", [z, e.op("Sub", [h, cand])])]), None
    return step


_CELLS = {"RNN": _rnn_cell, "LSTM": _lstm_cell, "GRU": _gru_cell}


def _unstack(e: Emitter, x: ir.Value, axis: int, n: int) -> list[ir.Value]:
    """The ``n`` slices of ``x`` along ``axis``, that axis dropped (a Split, whose gradient is one Concat)."""
    parts = [x] if n == 1 else list(e.op("Split", [x], {"axis": axis, "num_outputs": n}, num_outputs=n))
    return [e.op("Squeeze", [p, e.ints([axis])]) for p in parts]


def _concat(e: Emitter, values: list[ir.Value], axis: int) -> ir.Value:
    return values[0] if len(values) == 1 else e.op("Concat", values, {"axis": axis})


def _stack(e: Emitter, values: list[ir.Value | None]) -> ir.Value | None:
    """``values`` stacked along a new leading axis (None if they are None)."""
    if values[0] is None:
        return None
    return _concat(e, [e.op("Unsqueeze", [v, e.ints([0])]) for v in values], 0)
