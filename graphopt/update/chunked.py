"""The chunked update: a param group's flat buffers as rows of ``K`` elements, run by a Scan.

All tensors of a group (one dtype) live in flat buffers padded to whole rows. The
update model takes them as ``[rows, 1, K]`` views and applies the group's transform
chain to one row per Scan iteration, so the graph has the same few nodes for one
tensor or thousands, each row stays in cache while its ~10 passes run, and callers
can split the rows between threads. Scalar arithmetic (bias corrections, ``lr`` times
multipliers) is hoisted out of the body and runs once per run.

Moving averages (`Context.accumulate`, ``slot <- decay * slot + increment``) are written
literally, so every state buffer holds true values between steps: the update stays finite
wherever torch's does, reading state is a plain read, and a state dict restores a run exactly.
(Storing them lazily scaled, ``slot = scale * S``, saved a pass each, but ``S`` overflowed where
the true value did not, and folding the scale in at a reader's whim changed later rounding.)

A group-wide reduction (the global norm of `ClipByNorm`) is computed by a separate
*reduce* model over the same rows; its total is fed to the update model as the
scalar input ``<group>.sum_of_squares``. A chain that needs per-tensor values
(``ClipByNorm(per_tensor=True)``) or has slots not shaped like the parameter
(`Transform.shaped_slots`) raises `NotChunkable`.

Per-tensor scalar state (`Transform.scalar_slots`) is one value for the whole group here, as
the step count is: the scalar input ``<group>.<slot>`` and output ``<group>.<slot>.new``, both
computed outside the Scan; the facade runs a group chunked only while every tensor's value of
each such slot is the same.

I/O: ``params``, ``grads`` and one input per state slot, each ``[rows, 1, K]``;
outputs ``params.new`` and ``<slot>.new`` (and ``<group>.<scalar slot>.new``); scalar inputs as in `graphopt.names` with
the group's step count ``<group>.step``; the reduce model outputs ``sum_of_squares``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from graphopt import names
from graphopt.symbolic import Graph, Sym, cast, sum_of_squares
from graphopt.symbolic.dtypes import SCALAR_DTYPE
from graphopt.transforms import Context, Transform

PARAMS = "params"
GRADS = "grads"
SUM_OF_SQUARES = "sum_of_squares"

class NotChunkable(Exception):
    """The transform chain needs something the chunked form cannot give (per-tensor values)."""


@dataclass(frozen=True)
class ChunkedSpec:
    """A group's chunked update: its name, transform chain, dtype and row length ``K``."""

    group: str
    transform: Transform
    dtype: np.dtype
    chunk: int


@dataclass(frozen=True)
class ChunkedModels:
    update: onnx.ModelProto
    reduce: onnx.ModelProto | None  # present when the chain needs the group's sum of squares


class _Reduced(Exception):
    def __init__(self, partial: Sym):
        super().__init__()
        self.partial = partial


class _RowContext(Context):
    """A Context over one row of the group; group-wide sums come from the reduce model."""

    def __init__(self, *args, reducing: bool):
        super().__init__(*args)
        self.reducing = reducing
        self.total: Sym | None = None

    def sum_of_squares(self, updates):
        if self.reducing:  # stop here: this row's partial sum is the reduce model's result
            raise _Reduced(cast(sum_of_squares(updates[0]), SCALAR_DTYPE))
        if self.total is not None:
            raise NotChunkable("the chain takes two group-wide sums; only one is supported when chunked")
        self.total = self.graph.input(names.hyper(self.group, SUM_OF_SQUARES), SCALAR_DTYPE, (), weak=True)
        return self.total

    def tensor_sum_of_squares(self, u):
        raise NotChunkable("a per-tensor sum cannot be taken over rows of a flat buffer")


def build_chunked(spec: ChunkedSpec) -> ChunkedModels:
    """The update (and, if needed, reduce) model of ``spec``; raises `NotChunkable`."""
    graph, body, rows_in, grad, ctx = _row_graph(spec, reducing=False)
    updates = spec.transform.apply([grad], ctx)
    body.output(names.new(PARAMS) + ".row", ctx.params[0] + updates[0])
    slots = spec.transform.all_slots()
    for slot in slots:
        body.output(names.new(slot) + ".row", ctx.state_out[0][slot])
    for name, rows in zip([PARAMS, *slots], graph.scan(body, rows_in)):
        graph.output(names.new(name), rows)
    for slot in spec.transform.scalar_slots():
        graph.output(names.new(names.state(spec.group, slot)), ctx.state_out[0][slot])
    update = graph.to_model(doc_string=f"graphopt chunked update of {spec.group}")
    return ChunkedModels(update, _build_reduce(spec) if ctx.total is not None else None)


def _build_reduce(spec: ChunkedSpec) -> onnx.ModelProto:
    graph, body, rows_in, grad, ctx = _row_graph(spec, reducing=True)
    try:
        spec.transform.apply([grad], ctx)
    except _Reduced as reduced:
        body.output(SUM_OF_SQUARES + ".row", reduced.partial)
    (partials,) = graph.scan(body, rows_in)
    graph.output(SUM_OF_SQUARES, graph.op("ReduceSum", [partials], dtype=SCALAR_DTYPE, shape=(),
                                          attributes={"keepdims": 0}))
    return graph.to_model(doc_string=f"graphopt chunked reduction of {spec.group}")


def _row_graph(spec: ChunkedSpec, reducing: bool) -> tuple[Graph, Graph, list[Sym], Sym, _RowContext]:
    """The outer graph with ``[rows, 1, K]`` inputs, the Scan body, the row inputs, the body's
    gradient row, and a context over one row of the body."""
    if spec.transform.has_shaped_slots():
        raise NotChunkable("the chain has state slots not shaped like the parameter")
    graph = Graph("graphopt_chunked")
    slots = spec.transform.all_slots()
    row = (1, spec.chunk)
    rows_in = [graph.input(name, spec.dtype, (None, *row)) for name in (PARAMS, GRADS, *slots)]
    body = graph.subgraph("row", fuse=True)
    param, grad, *slot_rows = [body.input(f"{name}.row", spec.dtype, row, written_in_place=name != GRADS)
                               for name in (PARAMS, GRADS, *slots)]
    state = dict(zip(slots, slot_rows))
    for slot in spec.transform.scalar_slots():  # one value for the group (see the module docstring)
        state[slot] = graph.input(names.state(spec.group, slot), np.float64, (), weak=True)
    ctx = _RowContext(graph, spec.group, [spec.group], [param], [state], reducing=reducing)
    return graph, body, rows_in, grad, ctx
