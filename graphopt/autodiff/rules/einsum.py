"""The rule of Einsum: ``y = einsum("t_1,...,t_k->t_y", x_1, ..., x_k)`` is linear in each operand,
so ``dx_i = einsum("t_y,t_1,..(not t_i)..,t_k->t_i", g, x_1, ..(not x_i).., x_k)``.

Two corrections make that equation valid and its result ``x_i``-shaped:

* labels of ``t_i`` found in no other term (summed out of ``x_i`` alone), and ``...`` when no
  other term has it, are left out of the gradient's equation; their axes are put back as size 1
  and expanded to ``x_i``'s sizes (each element of ``x_i`` they summed gets the same gradient);
* where ``x_i`` was broadcast (a dimension of 1 against the others', or fewer ``...``
  dimensions), the gradient is summed back to ``x_i``'s shape.

A label repeated within one term (a diagonal) raises.
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.autodiff.emitter import Emitter
from graphopt.autodiff.rules.registry import attribute, known_rank, rule

ELLIPSIS = "."  # "..." stands for one such character in the parsed terms


@rule("Einsum")
def _einsum(node, grads, e):
    """``dx_i = einsum(g, the other operands -> t_i)``, with summed-out labels expanded back and
    broadcast axes summed (see the module's docstring)."""
    inputs, output = _parse(node)
    terms = [*inputs, output]
    ranks = [_ellipsis_rank(node, x, t) for x, t in zip(node.inputs, inputs)]
    ranks.append(max(ranks) if ELLIPSIS in output else 0)  # the output's "..." broadcasts the inputs'
    result = []
    for i, (x, term) in enumerate(zip(node.inputs, inputs)):
        others = [j for j in range(len(terms)) if j != i]
        if not x.dtype.is_floating_point():
            result.append(None)
            continue
        kept = "".join(c for c in term if any(c in terms[j] for j in others))
        produced = max(ranks[j] for j in others) if ELLIPSIS in kept else ranks[i]  # "..." in dx, once back
        operands = [grads[0], *(v for j, v in enumerate(node.inputs) if j != i)]
        equation = ",".join(_written(t) for t in [output, *(t for j, t in enumerate(inputs) if j != i)])
        dx = e.op("Einsum", operands, {"equation": f"{equation}->{_written(kept)}"})
        result.append(_to_operand_shape(e, dx, x, term, kept, ranks[i], produced))
    return result


def _parse(node: ir.Node) -> tuple[list[str], str]:
    """The input terms and the output term, explicit (implicit mode: ``...`` then the labels
    used once, in alphabetical order), each ``...`` written as one ``ELLIPSIS``."""
    equation = attribute(node, "equation").replace(" ", "").replace("...", ELLIPSIS)
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if not arrow:
        labels = "".join(inputs).replace(ELLIPSIS, "")
        rhs = (ELLIPSIS if ELLIPSIS in lhs else "") + "".join(sorted(c for c in set(labels) if labels.count(c) == 1))
    for term in [*inputs, rhs]:
        repeated = sorted({c for c in term if term.count(c) > 1})
        if repeated:
            raise NotImplementedError(f"Einsum node {node.name!r}: no gradient for the label(s) {repeated} repeated "
                                      f"within the term {_written(term)!r} (a diagonal) of {equation!r}")
    return inputs, rhs


def _written(term: str) -> str:
    return term.replace(ELLIPSIS, "...")


def _ellipsis_rank(node: ir.Node, x: ir.Value, term: str) -> int:
    """How many dimensions ``...`` stands for in ``x`` (0 where its term has none)."""
    if ELLIPSIS not in term:
        return 0
    return known_rank(x, node, "operand") - (len(term) - 1)


def _to_operand_shape(e: Emitter, dx: ir.Value, x: ir.Value, term: str, kept: str, ellipsis: int,
                      produced: int) -> ir.Value:
    """``dx`` (labelled ``kept``, its ``...`` of ``produced`` dimensions) made ``x``-shaped (its ``...``
    of ``ellipsis`` dimensions): missing labels put back and expanded, extra leading ``...``
    dimensions summed, broadcast dimensions summed back."""
    inserted, position = [], 0  # axes of size 1 to insert, numbered in the result
    for c in term:
        if c != ELLIPSIS:
            missing, width = int(c not in kept), 1
        elif c in kept:  # the leading dims of x's "..." that dx lacks
            missing, width = max(ellipsis - produced, 0), max(ellipsis, produced)
        else:
            missing, width = ellipsis, ellipsis
        inserted.extend(range(position, position + missing))
        position += width
    if inserted:
        dx = e.op("Unsqueeze", [dx, e.ints(inserted)])
    if produced > ellipsis:  # the other operands' "..." has more dimensions than x's: sum the leading ones
        start = term.index(ELLIPSIS)
        dx = e.op("ReduceSum", [dx, e.ints(list(range(start, start + produced - ellipsis)))], {"keepdims": 0})
    if inserted:
        dx = e.op("Expand", [dx, e.shape(x)])
    rank = len(term) - 1 + ellipsis if ELLIPSIS in term else len(term)
    stand_in = ir.Value(name=None, shape=ir.Shape([None] * rank), type=x.type)  # x's rank, sizes unknown
    return e.unbroadcast(dx, x, stand_in)
