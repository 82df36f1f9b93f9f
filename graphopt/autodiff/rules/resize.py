"""The rule of Resize in modes ``nearest`` and ``linear``, which are linear in ``X`` and separable.

Along each resized axis (input length ``n``, output length ``m``, scale ``s``: the given
scale, or ``m / n`` when ``sizes`` are given), output ``i`` reads the source coordinate

* ``half_pixel``: ``x = (i + 0.5) / s - 0.5``
* ``pytorch_half_pixel``: the same where ``m > 1``, else ``0``
* ``half_pixel_symmetric``: ``x = n / 2 * (1 - m / (s * n)) + (i + 0.5) / s - 0.5``
* ``align_corners``: ``x = i * (n - 1) / (m - 1)`` where ``m > 1``, else ``0``
* ``asymmetric``: ``x = i / s``

``nearest`` takes the element at ``x`` rounded by ``nearest_mode`` (``round_prefer_floor``
rounds halves down, ``round_prefer_ceil`` up, ``floor``, ``ceil``), ``linear`` takes
``(1 - r) * X[x0] + r * X[x0 + 1]`` with ``x0 = floor(x)``, ``r = x - x0``; indices are
clamped to ``[0, n - 1]``. So ``Y = X x_1 M_1 x_2 M_2 ...`` with one ``m x n`` matrix ``M_a``
per axis, and ``dX = g x_1 M_1^T x_2 M_2^T ...``: the matrices are built when the graph is,
from the static lengths of the resized axes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import (
    attribute,
    constant_value,
    folded_input,
    known_rank,
    optional_input,
    rule,
)

_COORDINATES = ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "align_corners", "asymmetric")
_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@rule("Resize")
def _resize(node, grads, e):
    """``dX = g x_a M_a^T`` over the resized axes ``a`` (see the module's docstring); roi, scales
    and sizes get none."""
    _check_supported(node)
    g = grads[0]
    x = node.inputs[0]
    rank = known_rank(x, node, "input")
    for axis, matrix in _axis_matrices(node, rank):
        g = _apply_transposed(e, g, e.constant(matrix.astype(x.dtype.numpy())), axis, rank)
    return [g] + [None] * (len(node.inputs) - 1)


def _check_supported(node: ir.Node) -> None:
    mode = attribute(node, "mode", "nearest")
    checks = [(mode in ("nearest", "linear"), f"mode {mode!r}"),
              (not attribute(node, "antialias", 0), "antialias=1"),
              (not attribute(node, "exclude_outside", 0), "exclude_outside=1"),
              (attribute(node, "keep_aspect_ratio_policy", "stretch") == "stretch",
               f"keep_aspect_ratio_policy {attribute(node, 'keep_aspect_ratio_policy')!r}"),
              (attribute(node, "coordinate_transformation_mode", "half_pixel") in _COORDINATES,
               f"coordinate_transformation_mode {attribute(node, 'coordinate_transformation_mode')!r}"),
              (attribute(node, "nearest_mode", "round_prefer_floor") in _ROUNDING,
               f"nearest_mode {attribute(node, 'nearest_mode')!r}")]
    for ok, what in checks:
        if not ok:
            raise NotImplementedError(f"Resize node {node.name!r}: no gradient for {what} (supported: modes nearest "
                                      f"and linear, coordinate transformations {', '.join(_COORDINATES)})")


def _given(node: ir.Node, index: int) -> tuple[bool, np.ndarray | None]:
    """Whether the optional input ``index`` is given (present and not empty), and its value if constant."""
    value = optional_input(node, index)
    if value is None:
        return False, None
    array = folded_input(node, index)
    if array is not None:
        return array.size > 0, array
    empty = value.shape is not None and any(d == 0 for d in value.shape)
    return not empty, None


def _axis_matrices(node: ir.Node, rank: int) -> list[tuple[int, np.ndarray]]:
    """``(axis, M)`` for every axis the node really resizes (``M`` is output length x input length)."""
    x, y = node.inputs[0], node.outputs[0]
    axes = [int(a) % rank for a in attribute(node, "axes", range(rank))]
    has_scales, scales = _given(node, 2)
    has_sizes, sizes = _given(node, 3)
    if has_scales and scales is None:
        raise NotImplementedError(f"Resize node {node.name!r}: no gradient with scales computed at run time")
    traced = _traced_sizes(node.inputs[3]) if has_sizes and sizes is None else None
    if traced is not None and len(traced) != len(axes):
        traced = None
    in_dims = list(x.shape)
    out_dims = list(y.shape) if y.shape is not None else [None] * rank
    matrices = []
    for i, axis in enumerate(axes):
        n, m = in_dims[axis], out_dims[axis]
        if has_scales:
            scale = float(scales[i])
            if scale == 1.0:
                continue  # every coordinate transformation maps i to i
        elif sizes is not None:
            m = int(sizes[i])
        elif has_sizes and traced is not None:
            if traced[i] == (x, axis):
                continue  # the input's own length, read at run time: the identity
            m = traced[i] if isinstance(traced[i], int) else _dim_of(*traced[i])
        if n == m and (isinstance(n, int) or getattr(n, "value", None) is not None):
            continue  # the same length: the identity (its scale is 1)
        if not isinstance(n, int):
            raise NotImplementedError(f"Resize node {node.name!r}: the gradient needs the static length of the "
                                      f"resized axis {axis} of its input {x.name!r}, got {x.shape}")
        if has_scales and not isinstance(m, int):
            m = int(np.floor(n * scale))
        if not isinstance(m, int):
            raise NotImplementedError(f"Resize node {node.name!r}: the gradient needs the static length of the "
                                      f"resized axis {axis} of its output {y.name!r}, got {y.shape}")
        matrices.append((axis, interpolation_matrix(node, n, m, scale if has_scales else m / n)))
    return matrices


def _dim_of(value: ir.Value, k: int):
    return None if value.shape is None else value.shape[k]


def _traced_sizes(value: ir.Value, depth: int = 6) -> list | None:
    """The elements of the 1-D int64 ``value`` computed at run time, each a constant ``int`` or
    ``(v, k)`` for dimension ``k`` of ``v`` (torch's TorchScript exporter writes the sizes of
    an interpolation as ``Concat(Slice(Shape(x), 0, 2), constant sizes)``); None where it cannot tell."""
    array = constant_value(value, depth=0)
    if array is not None:
        return [int(a) for a in array.reshape(-1)]
    node = value.producer()
    if depth == 0 or node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape" and node.inputs[0].shape is not None:
        rank = len(node.inputs[0].shape)
        start, end = attribute(node, "start", 0), attribute(node, "end", rank)
        return [(node.inputs[0], k) for k in range(rank)[slice(start, end)]]
    if node.op_type in ("Cast", "Identity"):
        return _traced_sizes(node.inputs[0], depth - 1)
    if node.op_type == "Concat":
        parts = [_traced_sizes(v, depth - 1) for v in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if node.op_type == "Slice":
        return _traced_slice(node, depth)
    return None


def _traced_slice(node: ir.Node, depth: int) -> list | None:
    """`_traced_sizes` of a Slice of a 1-D value by constants."""
    data = _traced_sizes(node.inputs[0], depth - 1)
    starts, ends, axes, steps = ([*(constant_value(v, depth=0) if v is not None else None for v in node.inputs[1:5]),
                                  None, None][:4])
    if data is None or starts is None or ends is None or (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    return data[int(starts.reshape(-1)[0]):int(ends.reshape(-1)[0]):step]


def source_coordinates(mode: str, n: int, m: int, scale: float) -> np.ndarray:
    """The input coordinate each of the ``m`` outputs reads along an axis of length ``n``."""
    i = np.arange(m, dtype=np.float64)
    if mode == "align_corners":
        return i * (n - 1) / (m - 1) if m > 1 else np.zeros(m)
    if mode == "asymmetric":
        return i / scale
    if mode == "pytorch_half_pixel" and m == 1:
        return np.zeros(m)
    offset = n / 2 * (1 - m / (scale * n)) if mode == "half_pixel_symmetric" else 0.0
    return offset + (i + 0.5) / scale - 0.5


def interpolation_matrix(node: ir.Node, n: int, m: int, scale: float) -> np.ndarray:
    """``M`` (``m x n``) with ``Y = M @ X`` along one axis, for the node's mode and attributes."""
    x = source_coordinates(attribute(node, "coordinate_transformation_mode", "half_pixel"), n, m, scale)
    rows = np.arange(m)
    matrix = np.zeros((m, n))
    below = np.floor(x)
    fraction = x - below
    if attribute(node, "mode", "nearest") == "linear":
        np.add.at(matrix, (rows, np.clip(below, 0, n - 1).astype(np.int64)), 1 - fraction)
        np.add.at(matrix, (rows, np.clip(below + 1, 0, n - 1).astype(np.int64)), fraction)
        return matrix
    rounding = attribute(node, "nearest_mode", "round_prefer_floor")
    up = {"round_prefer_floor": fraction > 0.5, "round_prefer_ceil": fraction >= 0.5,
          "floor": np.zeros(m, bool), "ceil": fraction > 0}[rounding]
    matrix[rows, np.clip(below + up, 0, n - 1).astype(np.int64)] = 1.0
    return matrix


def _apply_transposed(e: Emitter, g: ir.Value, matrix: ir.Value, axis: int, rank: int) -> ir.Value:
    """``g`` with its axis ``axis`` (of the output's length ``m``) mapped by ``M^T`` to the input's length."""
    if axis == rank - 2:
        return e.op("MatMul", [e.op("Transpose", [matrix], {"perm": [1, 0]}), g])
    if axis == rank - 1:
        return e.op("MatMul", [g, matrix])
    swap = list(range(rank))
    swap[axis], swap[-1] = swap[-1], swap[axis]
    moved = e.op("MatMul", [e.op("Transpose", [g], {"perm": swap}), matrix])
    return e.op("Transpose", [moved], {"perm": swap})
