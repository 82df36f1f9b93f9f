"""The C++ translation of each ONNX op a fused kernel supports, with ONNX Runtime's CPU semantics.

Each translation takes the node and its operands (C++ expressions on locals, with their element
types) and returns the C++ expression of its one output and that output's element type. Every
expression computes in the tensors' own type, in the order ONNX Runtime does (no reassociation, no
contraction: the fragment turns it off, `graphopt.fused.fragment`), so results agree bit for bit
(``tests/test_fused.py`` checks each against ORT, signed zeros, NaN and infinities included):

=====================  ===========================================================================
Add Sub Mul Div        ``a + b`` ...; operands of one type, as ONNX requires
Max, Min (variadic)    NaN propagates (the first NaN operand is the result), else ``a > b ? a : b``
                       (Min: ``a < b``): of two equal values (``-0``, ``+0``) the second, as
                       ORT's Eigen kernels give; folded left for more than two operands
Sqrt Abs Neg Floor     ``sqrt`` (correctly rounded, as ORT's), ``fabs``, ``-a``, ``floor``, ``ceil`` (the
Ceil Reciprocal        compiler's builtins), ``1 / a``
Sign                   ``1`` / ``-1`` for positive / negative, ``+0`` for either zero, NaN for NaN
Clip                   ``t = x < lo ? lo : x; hi < t ? hi : t``: NaN ``x`` stays NaN, a NaN bound is
                       ignored, an absent bound is the type's ``lowest()`` / ``max()`` (as ORT's: so
                       ``-inf`` clips to ``lowest()``)
Where                  ``c ? a : b``, except that a zero ``a`` gives ``+0``: ORT selects ``a`` or 0 and
                       ``b`` or 0 and keeps the first selection unless it is zero, so ``-0`` from
                       ``a`` becomes ``+0``; with a scalar ``c``, an element-wise ``a`` and a scalar
                       ``b`` the roles swap (``-0`` from ``b`` becomes ``+0``)
IsInf IsNaN            ``detect_positive`` / ``detect_negative`` honoured
Less Greater Equal     IEEE comparisons (false with a NaN operand), bool results
LessOrEqual ...        ``GreaterOrEqual`` too
And Or Xor Not         on bools
Cast                   ``static_cast`` between float, double, bool, int64 (float -> bool: NaN is
                       true, as ORT's ``static_cast``)
Gemm                   on ``[1, 1]`` ``A`` and ``[1, K]`` (or, with ``transB``, ``[K, 1]``) ``B``:
                       ``p = a * b``, then ``p + 0.0`` (MLAS accumulates from ``+0``, so a ``-0``
                       product gives ``+0``) except for float with ``alpha = beta = 1``, a ``C`` and
                       neither operand transposed;
                       ``y = fma(alpha, p, beta * c)`` with ``alpha``, ``beta`` the float32
                       attributes (``p + c`` when ``alpha`` is 1; ``alpha * p`` without ``C`` or when
                       ``beta`` is 0, as ORT skips ``C`` then)
Pow                    ORT's: a scalar exponent of 2 or 3 is ``x * x`` / ``x * x * x``, any
                       other ``std::pow`` in the tensor type (``powf`` / ``pow``: equal to ORT's
                       as long as both call the same C library, as on Linux)
Identity               ``a``
=====================  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto

from graphopt.fused.cpp import FLOATS, cpp_type, literal
from graphopt.fused.errors import NotFusable

BOOL = TensorProto.BOOL

HELPERS = """\
// The math functions as compiler builtins under GCC and clang: std:: wrappers compiled without the
// kernel's options would not be inlined into it (no vector code); the values are the same.
#if defined(__GNUC__)
#define GRAPHOPT_MATH(name, f, d) \\
  GRAPHOPT_STRICT_FP static inline float graphopt_##name(float x) { return f(x); } \\
  GRAPHOPT_STRICT_FP static inline double graphopt_##name(double x) { return d(x); }
GRAPHOPT_MATH(sqrt, __builtin_sqrtf, __builtin_sqrt)
GRAPHOPT_MATH(fabs, __builtin_fabsf, __builtin_fabs)
GRAPHOPT_MATH(floor, __builtin_floorf, __builtin_floor)
GRAPHOPT_MATH(ceil, __builtin_ceilf, __builtin_ceil)
#define graphopt_isnan(x) __builtin_isnan(x)
GRAPHOPT_STRICT_FP static inline float graphopt_fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
GRAPHOPT_STRICT_FP static inline double graphopt_fma(double a, double b, double c) { return __builtin_fma(a, b, c); }
#else
#define GRAPHOPT_MATH(name, f, d) \\
  static inline float graphopt_##name(float x) { return std::f(x); } \\
  static inline double graphopt_##name(double x) { return std::f(x); }
GRAPHOPT_MATH(sqrt, sqrt, sqrt)
GRAPHOPT_MATH(fabs, fabs, fabs)
GRAPHOPT_MATH(floor, floor, floor)
GRAPHOPT_MATH(ceil, ceil, ceil)
#define graphopt_isnan(x) std::isnan(x)
#define graphopt_fma(a, b, c) std::fma(a, b, c)
#endif
template <typename T> GRAPHOPT_STRICT_FP static inline T graphopt_max(T a, T b) {
  const T m = a > b ? a : b;  // selects one after another (not nested), which GCC vectorizes
  const T r = graphopt_isnan(b) ? b : m;
  return graphopt_isnan(a) ? a : r;
}
template <typename T> GRAPHOPT_STRICT_FP static inline T graphopt_min(T a, T b) {
  const T m = a < b ? a : b;
  const T r = graphopt_isnan(b) ? b : m;
  return graphopt_isnan(a) ? a : r;
}
template <typename T> GRAPHOPT_STRICT_FP static inline T graphopt_sign(T x) {
  const T z = x == T(0) ? T(0) : x;  // NaN stays NaN
  const T n = x < T(0) ? T(-1) : z;
  return x > T(0) ? T(1) : n;
}
template <typename T> GRAPHOPT_STRICT_FP static inline T graphopt_clip(T x, T lo, T hi) {
  const T t = x < lo ? lo : x;
  return hi < t ? hi : t;
}
template <typename T> GRAPHOPT_STRICT_FP static inline T graphopt_where(bool c, T x, T y) {
  const T nonzero = x == T(0) ? T(0) : x;
  return c ? nonzero : y;
}
template <typename T> GRAPHOPT_STRICT_FP static inline T graphopt_pow(T x, T y) {
  return y == T(2) ? x * x : y == T(3) ? x * x * x : static_cast<T>(std::pow(x, y));
}
"""


@dataclass(frozen=True)
class Operand:
    """A node input as the kernel sees it: a C++ expression, its ONNX element type, its element count
    (1 for a scalar broadcast to every element, else the row length)."""

    expr: str
    elem_type: int
    size: int


Translation = Callable[[onnx.NodeProto, list], tuple[str, int]]
TRANSLATIONS: dict[str, Translation] = {}


def translation(*op_types: str):
    def register(fn: Translation) -> Translation:
        for op_type in op_types:
            TRANSLATIONS[op_type] = fn
        return fn
    return register


def describe(node: onnx.NodeProto) -> str:
    return f"node {node.name or '?'} ({node.op_type}, output {node.output[0]!r})"


def translate(node: onnx.NodeProto, operands: list) -> tuple[str, int]:
    """``(C++ expression, element type)`` of ``node``'s output; `NotFusable` if it has no translation."""
    if node.domain not in ("", "ai.onnx"):
        raise NotFusable(f"{describe(node)}: domain {node.domain!r} is not supported by fused kernels")
    if node.op_type not in TRANSLATIONS:
        raise NotFusable(f"{describe(node)}: op {node.op_type} has no fused-kernel translation "
                         f"(supported: {', '.join(sorted(TRANSLATIONS))})")
    if len(node.output) != 1:
        raise NotFusable(f"{describe(node)}: fused kernels translate single-output nodes only")
    return TRANSLATIONS[node.op_type](node, operands)


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _same_type(node: onnx.NodeProto, operands: list, floats_only: bool = True) -> int:
    types = {o.elem_type for o in operands if o is not None}
    if len(types) != 1:
        raise NotFusable(f"{describe(node)}: operands of different element types {sorted(types)}")
    (elem_type,) = types
    if floats_only and elem_type not in FLOATS:
        raise NotFusable(f"{describe(node)}: fused kernels compute {node.op_type} on float and double only")
    return elem_type


def _arity(node: onnx.NodeProto, operands: list, *counts: int) -> None:
    if len(operands) not in counts or any(o is None for o in operands):
        raise NotFusable(f"{describe(node)}: expected {' or '.join(map(str, counts))} inputs, got {len(operands)}")


@translation("Add", "Sub", "Mul", "Div")
def _arithmetic(node, operands):
    _arity(node, operands, 2)
    symbol = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}[node.op_type]
    return f"({operands[0].expr} {symbol} {operands[1].expr})", _same_type(node, operands)


@translation("Max", "Min")
def _extremum(node, operands):
    if not operands or any(o is None for o in operands):
        raise NotFusable(f"{describe(node)}: expected at least one input")
    elem_type = _same_type(node, operands)
    helper = "graphopt_max" if node.op_type == "Max" else "graphopt_min"
    expr = operands[0].expr
    for operand in operands[1:]:
        expr = f"{helper}<{cpp_type(elem_type, describe(node))}>({expr}, {operand.expr})"
    return expr, elem_type


_UNARY = {"Sqrt": "graphopt_sqrt({})", "Abs": "graphopt_fabs({})", "Neg": "(-{})", "Floor": "graphopt_floor({})",
          "Ceil": "graphopt_ceil({})", "Identity": "{}"}


@translation(*_UNARY)
def _unary(node, operands):
    _arity(node, operands, 1)
    elem_type = operands[0].elem_type if node.op_type == "Identity" else _same_type(node, operands)
    return _UNARY[node.op_type].format(operands[0].expr), elem_type


@translation("Reciprocal")
def _reciprocal(node, operands):
    _arity(node, operands, 1)
    elem_type = _same_type(node, operands)
    return f"({literal(1.0, elem_type)} / {operands[0].expr})", elem_type


@translation("Sign")
def _sign(node, operands):
    _arity(node, operands, 1)
    elem_type = _same_type(node, operands)
    return f"graphopt_sign<{cpp_type(elem_type, describe(node))}>({operands[0].expr})", elem_type


@translation("Clip")
def _clip(node, operands):
    if not 1 <= len(operands) <= 3 or operands[0] is None:
        raise NotFusable(f"{describe(node)}: expected 1 to 3 inputs")
    elem_type = _same_type(node, operands)
    ctype = cpp_type(elem_type, describe(node))
    low, high = (list(operands[1:]) + [None, None])[:2]
    low_expr = low.expr if low is not None else f"std::numeric_limits<{ctype}>::lowest()"
    high_expr = high.expr if high is not None else f"std::numeric_limits<{ctype}>::max()"
    return f"graphopt_clip<{ctype}>({operands[0].expr}, {low_expr}, {high_expr})", elem_type


@translation("Where")
def _where(node, operands):
    _arity(node, operands, 3)
    if operands[0].elem_type != BOOL:
        raise NotFusable(f"{describe(node)}: the condition must be bool")
    elem_type = _same_type(node, operands[1:], floats_only=False)
    c, a, b = operands
    if elem_type == BOOL:
        return f"({c.expr} ? {a.expr} : {b.expr})", elem_type
    ctype = cpp_type(elem_type, describe(node))
    if c.size == 1 and a.size != 1 and b.size == 1:  # ORT merges b's selection first here
        return f"graphopt_where<{ctype}>(!{c.expr}, {b.expr}, {a.expr})", elem_type
    return f"graphopt_where<{ctype}>({c.expr}, {a.expr}, {b.expr})", elem_type


@translation("IsInf")
def _isinf(node, operands):
    _arity(node, operands, 1)
    elem_type = _same_type(node, operands)
    ctype = cpp_type(elem_type, describe(node))
    x = operands[0].expr
    tests = []
    if _attr(node, "detect_positive", 1):
        tests.append(f"{x} == std::numeric_limits<{ctype}>::infinity()")
    if _attr(node, "detect_negative", 1):
        tests.append(f"{x} == -std::numeric_limits<{ctype}>::infinity()")
    return f"static_cast<bool>({' | '.join(f'({t})' for t in tests) or 'false'})", BOOL


@translation("IsNaN")
def _isnan(node, operands):
    _arity(node, operands, 1)
    _same_type(node, operands)
    return f"static_cast<bool>(graphopt_isnan({operands[0].expr}))", BOOL


_COMPARISONS = {"Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">=", "Equal": "=="}


@translation(*_COMPARISONS)
def _compare(node, operands):
    _arity(node, operands, 2)
    _same_type(node, operands, floats_only=node.op_type != "Equal")
    return f"({operands[0].expr} {_COMPARISONS[node.op_type]} {operands[1].expr})", BOOL


_LOGICAL = {"And": "&", "Or": "|", "Xor": "^"}  # no short-circuit: no branches in the loop


@translation("And", "Or", "Xor", "Not")
def _logical(node, operands):
    _arity(node, operands, 1 if node.op_type == "Not" else 2)
    if _same_type(node, operands, floats_only=False) != BOOL:
        raise NotFusable(f"{describe(node)}: operands must be bool")
    if node.op_type == "Not":
        return f"(!{operands[0].expr})", BOOL
    return f"static_cast<bool>({operands[0].expr} {_LOGICAL[node.op_type]} {operands[1].expr})", BOOL


@translation("Cast")
def _cast(node, operands):
    _arity(node, operands, 1)
    to = _attr(node, "to", None)
    ctype = cpp_type(to, describe(node))
    cpp_type(operands[0].elem_type, describe(node))
    if operands[0].elem_type == to:
        return operands[0].expr, to
    return f"static_cast<{ctype}>({operands[0].expr})", to


@translation("Gemm")
def _gemm(node, operands):
    _arity(node, operands, 2, 3)
    elem_type = _same_type(node, operands)
    a, b = operands[:2]
    if _attr(node, "transA", 0) not in (0, 1) or a.size != 1:
        raise NotFusable(f"{describe(node)}: fused kernels take Gemm with a [1, 1] A operand only")
    alpha = float(np.float32(_attr(node, "alpha", 1.0)))
    beta = float(np.float32(_attr(node, "beta", 1.0)))
    addend = None
    if len(operands) == 3 and beta != 0.0:  # ORT skips C when beta is 0
        addend = operands[2].expr if beta == 1.0 else f"({literal(beta, elem_type)} * {operands[2].expr})"
    product = f"({a.expr} * {b.expr})"
    transposed = _attr(node, "transA", 0) or _attr(node, "transB", 0)
    if elem_type == TensorProto.DOUBLE or transposed or not (alpha == 1.0 and beta == 1.0 and addend is not None):
        product = f"({product} + {literal(0.0, elem_type)})"  # MLAS's accumulator starts at +0 here
    if addend is None:
        return (product if alpha == 1.0 else f"({literal(alpha, elem_type)} * {product})"), elem_type
    if alpha == 1.0:
        return f"({product} + {addend})", elem_type
    return f"graphopt_fma({literal(alpha, elem_type)}, {product}, {addend})", elem_type


@translation("Pow")
def _pow(node, operands):
    _arity(node, operands, 2)
    elem_type = _same_type(node, operands)
    x, y = operands
    ctype = cpp_type(elem_type, describe(node))
    if y.size == 1:  # ORT's special cases apply to a scalar exponent only
        return f"graphopt_pow<{ctype}>({x.expr}, {y.expr})", elem_type
    return f"static_cast<{ctype}>(std::pow({x.expr}, {y.expr}))", elem_type
