"""Rules of operators that move data without computing: reshapes, transposes, slices."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import (
    attribute,
    constant_input,
    known_rank,
    optional_input,
    rule,
)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(node, grads, e):
    """``dx = reshape(g, shape of x)``."""
    return [e.reshape_like(grads[0], node.inputs[0])] + [None] * (len(node.inputs) - 1)


@rule("Transpose")
def _transpose(node, grads, e):
    """``dx = transpose(g, inverse of perm)``."""
    perm = attribute(node, "perm")
    if perm is None:
        perm = list(range(known_rank(node.inputs[0], node, "input")))[::-1]
    return [e.op("Transpose", [grads[0]], {"perm": [int(i) for i in np.argsort(perm)]})]


def _dim(e: Emitter, x: ir.Value, axis: int) -> ir.Value:
    """``x``'s size along ``axis`` (negative: from the end) at run time, as a 1-D tensor."""
    return e.shape(x, axis, axis + 1 if axis != -1 else None)


@rule("Concat")
def _concat(node, grads, e):
    """``dx_i = split(g, sizes of the x_i along axis)``."""
    axis = int(attribute(node, "axis"))
    if len(node.inputs) == 1:
        return [grads[0]]
    sizes = e.op("Concat", [_dim(e, x, axis) for x in node.inputs], {"axis": 0})
    return list(e.op("Split", [grads[0], sizes], {"axis": axis}, num_outputs=len(node.inputs)))


@rule("Split")
def _split(node, grads, e):
    """``dx = concat(g_0, ..., g_k, axis)``."""
    return [e.op("Concat", list(grads), {"axis": int(attribute(node, "axis", 0))})] + [None] * (len(node.inputs) - 1)


@rule("Expand")
def _expand(node, grads, e):
    """``dx = unb(g)``."""
    return [e.unbroadcast(grads[0], node.inputs[0], node.outputs[0]), None]


@rule("Slice")
def _slice(node, grads, e):
    """``dx = g`` placed where the slice took it from, zeros elsewhere: a Pad by the clamped
    starts and the remainders when every step is 1, else a scatter by flat index."""
    x, g = node.inputs[0], grads[0]
    steps = constant_input(node, 4) if optional_input(node, 4) is not None else np.ones(1)
    no_grads = [None] * (len(node.inputs) - 1)
    if steps is None or np.any(steps != 1):
        return [_scatter_by_flat_index(node, g, e)] + no_grads
    starts, ends = (e.op("Cast", [node.inputs[i]], {"to": ir.DataType.INT64}) for i in (1, 2))
    axes = optional_input(node, 3)
    if axes is None:  # 0, 1, ..., len(starts) - 1
        axes = e.op("Range", [e.constant(np.int64(0)), e.length(node.inputs[1]), e.constant(np.int64(1))])
    dims = e.op("Gather", [e.shape(x), axes])
    zero = e.ints([0])

    def clamp(i):  # Slice's rule for an index: counted from the end if negative, then into [0, dim]
        i = e.op("Where", [e.op("Less", [i, zero]), e.op("Add", [i, dims]), i])
        return e.op("Min", [e.op("Max", [i, zero]), dims])
    begin = clamp(starts)
    end = e.op("Max", [clamp(ends), begin])
    pads = e.op("Concat", [begin, e.op("Sub", [dims, end])], {"axis": 0})
    return [e.op("Pad", [g, pads, None, axes])] + no_grads


def _scatter_by_flat_index(node: ir.Node, g: ir.Value, e: Emitter) -> ir.Value:
    """The gradient of a Slice of any steps: slice the flat indices of ``x`` the same way and scatter."""
    x = node.inputs[0]
    size = e.op("ReduceProd", [e.shape(x)], {"keepdims": 0})
    index = e.op("Reshape", [e.op("Range", [e.constant(np.int64(0)), size, e.constant(np.int64(1))]), e.shape(x)])
    taken = e.op("Slice", [index, *node.inputs[1:]])
    flat = e.op("ScatterElements", [e.zeros(e.op("Reshape", [size, e.ints([1])]), x),
                                    e.op("Reshape", [taken, e.ints([-1])]), e.op("Reshape", [g, e.ints([-1])])])
    return e.reshape_like(flat, x)


def _from_the_front(e: Emitter, indices: ir.Value, x: ir.Value, axis: int) -> ir.Value:
    """``indices`` into ``x`` along ``axis`` as int64, negative ones counted from the end made non-negative."""
    indices = e.op("Cast", [indices], {"to": ir.DataType.INT64})
    size = e.op("Squeeze", [_dim(e, x, axis)])
    return e.op("Where", [e.op("Less", [indices, e.constant(np.int64(0))]), e.op("Add", [indices, size]), indices])


@rule("Gather")
def _gather(node, grads, e):
    """``dx = scatter-add of g into zeros`` at the gathered indices along ``axis`` (repeats add up)."""
    (g,), (x, indices) = grads, node.inputs
    axis = int(attribute(node, "axis", 0))
    indices = _from_the_front(e, indices, x, axis)
    if axis == 0:  # the common case (embeddings), which needs no rank
        zeros = e.zeros(e.shape(x), x)
        return [e.op("ScatterND", [zeros, e.op("Unsqueeze", [indices, e.ints([-1])]), g], {"reduction": "add"}), None]
    rank, k = known_rank(x, node, "data"), known_rank(node.inputs[1], node, "indices")
    axis %= rank
    to_front = [axis, *range(axis), *range(axis + 1, rank)]  # x with the gathered axis first
    g_front = [*range(axis, axis + k), *range(axis), *range(axis + k, rank - 1 + k)]  # g with the index dims first
    zeros = e.zeros(e.op("Gather", [e.shape(x), e.ints(to_front)]), x)
    if axis:
        g = e.op("Transpose", [g], {"perm": g_front})
    dx = e.op("ScatterND", [zeros, e.op("Unsqueeze", [indices, e.ints([-1])]), g], {"reduction": "add"})
    if axis:
        dx = e.op("Transpose", [dx], {"perm": [int(i) for i in np.argsort(to_front)]})
    return [dx, None]


@rule("Pad")
def _pad(node, grads, e):
    """Constant mode: ``dx = pad(g, -pads)``, which crops what was added (and restores, as
    zeros, what negative pads cropped). Reflect, edge and wrap modes raise."""
    mode = attribute(node, "mode", "constant")
    if mode != "constant":
        raise NotImplementedError(f"Pad node {node.name!r}: no gradient for mode {mode!r}")
    axes = optional_input(node, 3)
    return [e.op("Pad", [grads[0], e.op("Neg", [node.inputs[1]]), None, axes]), None, None, None][:len(node.inputs)]


@rule("Tile")
def _tile(node, grads, e):
    """``dx = sum over the tiles of g``: ``g`` seen as ``[r0, d0, r1, d1, ...]``, summed over the ``r`` axes."""
    x, repeats = node.inputs
    pairs = e.op("Concat", [e.op("Unsqueeze", [repeats, e.ints([1])]), e.op("Unsqueeze", [e.shape(x), e.ints([1])])],
                 {"axis": 1})
    split = e.op("Reshape", [grads[0], e.op("Reshape", [pairs, e.ints([-1])])])
    every_other = e.op("Range", [e.constant(np.int64(0)), e.op("Mul", [e.rank(x), e.constant(np.int64(2))]),
                                   e.constant(np.int64(2))])
    return [e.op("ReduceSum", [split, every_other], {"keepdims": 0}), None]


@rule("GatherElements")
def _gather_elements(node, grads, e):
    """``dx = scatter-add of g into zeros`` at ``indices`` along ``axis``."""
    (g,), (x, indices) = grads, node.inputs
    axis = int(attribute(node, "axis", 0))
    indices = _from_the_front(e, indices, x, axis)
    return [e.op("ScatterElements", [e.zeros(e.shape(x), x), indices, g], {"axis": axis, "reduction": "add"}), None]


@rule("ConstantOfShape")
def _constant_of_shape(node, grads, e):
    """The values do not depend on the input, a shape (as torch.onnx exports zero initial states): none."""
    return [None]
