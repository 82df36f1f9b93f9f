"""The kernel fragment of a translated body: C++17 text per /work/FUSED_CONTRACT.md.

An element-wise fragment defines ``graphopt_kernel``: per element, every input is loaded, the body's
statements run on locals, then every output is stored, so an output may alias an input. A reduction
fragment (``GRAPHOPT_REDUCTION``) defines ``graphopt_reduce``: per row of ``K`` elements (the
chunked model's rows; ranges start on a row), the squares are summed in the tensors' type (in 8
interleaved partial sums added pairwise: ORT's Eigen sums in an order of its own, which depends on the
buffer's alignment, so no order is bit-exact and this one vectorizes), the row's statements run on
that sum, and the row results are added up in double, in order.

Both are compiled without floating-point contraction whatever the flags (``GRAPHOPT_STRICT_FP``, GCC's
``optimize("fp-contract=off")``; clang's ``#pragma clang fp contract(off)``), so ``a * b + c`` rounds the
product as ONNX Runtime does. The element loop is marked free of dependences between iterations
(``#pragma GCC ivdep``: an output aliases an input exactly or not at all), and GCC may assume no
floating-point traps (``no-trapping-math``, which changes no result), so it vectorizes, selects included.

``GRAPHOPT_OP_NAME`` is ``Fused_`` and the first 16 hex digits of the SHA-256 of the rest of the text.
"""

from __future__ import annotations

import hashlib
import itertools
import re

from onnx import TensorProto

from graphopt.fused.body import ELEMENT, ROW, UNIFORM, Body
from graphopt.fused.cpp import cpp_type, literal
from graphopt.fused.ops import HELPERS

PRELUDE = """\
#include <cmath>
#include <cstdint>
#include <limits>

// No a * b + c contracted to an FMA, whatever the compiler's flags: ONNX Runtime rounds the product.
// (no-trapping-math and no-math-errno change no value; they let GCC vectorize selects and sqrt.)
#if defined(__GNUC__) && !defined(__clang__)
#define GRAPHOPT_STRICT_FP __attribute__((optimize("fp-contract=off", "no-trapping-math", "no-math-errno")))
#else
#define GRAPHOPT_STRICT_FP
#endif

"""


def render(body: Body, *, reduction: bool) -> tuple[str, str]:
    """``(fragment text, op name)`` of ``body``."""
    inputs = [t for _, t in body.elementwise] + [t for _, t in body.scalars]
    outputs = [TensorProto.DOUBLE] if reduction else [t for _, t, _ in body.outputs]
    lines = [
        f"static const int graphopt_num_inputs = {len(inputs)};",
        f"static const int graphopt_num_outputs = {len(outputs)};",
        f"static const int graphopt_input_types[] = {{{', '.join(map(str, inputs))}}};",
        f"static const int graphopt_output_types[] = {{{', '.join(map(str, outputs))}}};",
        f"static const int graphopt_elementwise_inputs = {len(body.elementwise)};",
        "",
    ]
    if reduction:
        lines.insert(0, "#define GRAPHOPT_REDUCTION 1")
    rest = PRELUDE + "\n".join(lines) + "\n" + HELPERS + "\n" + "\n".join(_function(body, reduction)) + "\n"
    name = "Fused_" + hashlib.sha256(rest.encode()).hexdigest()[:16]
    return f'#define GRAPHOPT_OP_NAME "{name}"\n' + rest, name


def _function(body: Body, reduction: bool) -> list[str]:
    if reduction:
        head = ["GRAPHOPT_STRICT_FP static double graphopt_reduce(int64_t begin, int64_t end, const void* const* in) {"]
    else:
        head = ["GRAPHOPT_STRICT_FP static void graphopt_kernel(int64_t begin, int64_t end, const void* const* in, "
                "void* const* out) {"]
    head += ["#if defined(__clang__)", "#pragma clang fp contract(off)", "#endif"]
    lines = head + _reads(body, reduction)
    lines += [f"  {s}" for s in body.statements[UNIFORM]]
    return lines + (_reduce_loop(body) if reduction else _element_loop(body)) + ["}"]


def _used(body: Body) -> set[int]:
    """The element-wise inputs some statement or output reads (the others are not loaded)."""
    text = " ".join([*body.statements[ELEMENT], *body.statements[ROW], *(local for _, _, local in body.outputs),
                     body.reduction.operand if body.reduction else ""])
    return {int(k) for k in re.findall(r"\bx(\d+)\b", text)}


# No dependence between iterations: an output aliases an input exactly or not at all (the contract), so
# the loop may be vectorized without run-time overlap checks (which GCC gives up on past ~10 pointers).
IVDEP = ["#if defined(__clang__)", "#pragma clang loop vectorize(assume_safety)", "#elif defined(__GNUC__)",
         "#pragma GCC ivdep", "#endif"]


def _reads(body: Body, reduction: bool) -> list[str]:
    lines = []
    used = _used(body)
    for k, (_, elem_type) in enumerate(body.elementwise):
        if k not in used:
            continue
        ctype = cpp_type(elem_type, "input")
        lines.append(f"  const {ctype}* const in{k} = static_cast<const {ctype}*>(in[{k}]);")
    offset = len(body.elementwise)
    for j, (_, elem_type) in enumerate(body.scalars):
        ctype = cpp_type(elem_type, "input")
        lines.append(f"  const {ctype} s{j} = *static_cast<const {ctype}*>(in[{offset + j}]);")
    if not reduction:
        for k, (_, elem_type, _) in enumerate(body.outputs):
            ctype = cpp_type(elem_type, "output")
            lines.append(f"  {ctype}* const out{k} = static_cast<{ctype}*>(out[{k}]);")
    return lines


def _loads(body: Body, indent: str, index: str = "i") -> list[str]:
    used = _used(body)
    return [f"{indent}const {cpp_type(t, 'input')} x{k} = in{k}[{index}];" for k, (_, t) in enumerate(body.elementwise)
            if k in used]


MAX_SWITCHES = 2  # loop copies: 2 ** switches


def _element_loop(body: Body) -> list[str]:
    """The element loop; a Where whose condition is one bool for all elements gets a copy of the loop per
    value of it (at most MAX_SWITCHES conditions), with the condition a constant in each: GCC does not
    vectorize some loops that select on a loop-invariant bool."""
    switches = body.switches[:MAX_SWITCHES]
    if not switches:
        return _loop_copy(body, {}, "  ")
    lines = []
    for values in itertools.product((True, False), repeat=len(switches)):
        test = " && ".join(name if value else f"!{name}" for name, value in zip(switches, values))
        lines.append(f"  {'if' if not lines else '} else if'} ({test}) {{")
        lines += _loop_copy(body, dict(zip(switches, values)), "    ")
    return lines + ["  }"]


def _loop_copy(body: Body, constants: dict[str, bool], indent: str) -> list[str]:
    def substitute(text: str) -> str:
        for name, value in constants.items():
            text = re.sub(rf"\b{name}\b", "true" if value else "false", text)
        return text
    inner = indent + "  "
    lines = [indent + line.strip() if line.startswith("#") else line for line in IVDEP]
    lines += [f"{indent}for (int64_t i = begin; i < end; ++i) {{"] + _loads(body, inner)
    lines += [f"{inner}{substitute(s)}" for s in body.statements[ELEMENT]]
    lines += [f"{inner}out{k}[i] = {substitute(local)};" for k, (_, _, local) in enumerate(body.outputs)]
    return lines + [f"{indent}}}"]


LANES = 8  # independent partial sums per row, added up pairwise: a vectorizable order, and a more exact one


def _reduce_loop(body: Body) -> list[str]:
    """Per row: the squares summed in LANES interleaved partial sums (``lane[j]`` takes elements
    ``j, j + LANES, ...``), which are added pairwise, then the row's remaining elements in order."""
    reduction = body.reduction
    ctype = cpp_type(reduction.elem_type, "ReduceSumSquare")
    (_, _, result) = body.outputs[0]
    k = body.row_length
    zero = literal(0.0, reduction.elem_type)
    element = [f"        {s}" for s in body.statements[ELEMENT]]
    lines = [
        "  double graphopt_total = 0.0;",
        f"  for (int64_t row = begin; row < end; row += {k}) {{",
        f"    const int64_t row_end = end - row < {k} ? end : row + {k};",
        f"    {ctype} lane[{LANES}] = {{{', '.join([zero] * LANES)}}};",
        "    int64_t i = row;",
        f"    for (; i + {LANES} <= row_end; i += {LANES}) {{",
        f"      for (int64_t j = 0; j < {LANES}; ++j) {{",
    ]
    lines += _loads(body, "        ", "i + j") + element
    lines += [f"        lane[j] += {reduction.operand} * {reduction.operand};", "      }", "    }"]
    lines += [f"    {ctype} graphopt_sum = {_pairwise([f'lane[{j}]' for j in range(LANES)])};",
              "    for (; i < row_end; ++i) {"]
    lines += _loads(body, "      ") + [line[2:] for line in element]
    lines += [f"      graphopt_sum += {reduction.operand} * {reduction.operand};", "    }"]
    lines += [f"    const {ctype} {reduction.local} = graphopt_sum;"]
    lines += [f"    {s}" for s in body.statements[ROW]]
    lines += [f"    graphopt_total += static_cast<double>({result});", "  }", "  return graphopt_total;"]
    return lines


def _pairwise(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return f"({_pairwise(terms[:half])} + {_pairwise(terms[half:])})"
