"""The input and output names of update and training-step models: one contract, one place.

For a parameter ``p`` of param group ``g``:

=========================  ======================================================
``p``                      the parameter (input); ``p.new`` the updated one (output)
``p.grad``                 its gradient (input)
``p.<slot>``               optimizer state, e.g. ``p.exp_avg`` (input), shaped like ``p`` or as its
                           transform declares (``p.row_var``); ``p.<slot>.new`` (output)
``p.<scalar slot>``        per-tensor scalar state, e.g. ``p.mu_product``, float64 scalar (input);
                           ``p.<scalar slot>.new`` (output). In a chunked update, ``g.<scalar slot>``
                           (and ``g.step``): one value for all of the group's tensors
``p.step``                 updates ``p`` had so far, float64 scalar (input); ``p.step.new`` (output)
``p.has_grad``             whether ``p`` is updated this step, bool scalar (input of masked update graphs)
``g.<hyper>``              a hyperparameter, float64 scalar (input), e.g. ``group0.lr``
``found_inf``              whether a gradient was NaN or inf, so the step was skipped (bool output of
                           guarded updates, `graphopt.update.guard`)
``grad_scaler.<name>``     the dynamic loss scale's state and settings (``grad_scaler.scale``, float32;
                           ``grad_scaler.growth_tracker``, int64; inputs, with ``.new`` outputs for the
                           state), e.g. ``grad_scaler.growth_factor``
=========================  ======================================================

So that no two of these coincide, `check_unambiguous` refuses (when parameters are added to an
optimizer, and in a `Trainer` for its parameters, running statistics and inputs) a name that
starts with another parameter's (or running statistic's) name and a dot, such as ``a.grad``
or ``a.exp_avg`` next to ``a``, the names ``group<N>`` and ``group<N>.<anything>``, ``found_inf``
and ``grad_scaler`` and ``grad_scaler.<anything>``.
"""

import re
from collections.abc import Iterable

NEW = ".new"
FOUND_INF = "found_inf"
_RESERVED = re.compile(r"(group\d+|grad_scaler)(\..*)?|found_inf", re.DOTALL)


def grad(param: str) -> str:
    return f"{param}.grad"


def state(param: str, slot: str) -> str:
    return f"{param}.{slot}"


def step(param: str) -> str:
    return f"{param}.step"


def has_grad(param: str) -> str:
    return f"{param}.has_grad"


def hyper(group: str, name: str) -> str:
    return f"{group}.{name}"


def new(name: str) -> str:
    return name + NEW


def grad_scaler(name: str) -> str:
    return f"grad_scaler.{name}"


def group(index: int) -> str:
    return f"group{index}"


def check_unambiguous(generating: Iterable[str], others: Iterable[str] = (), where: str = "") -> None:
    """Raise if a name could be one generated for another: a name of ``generating`` (parameters
    and running statistics, which get ``.grad``, ``.new``, state names...) followed by ``.``, or
    a group's (``group<N>``, ``group<N>.<hyper>``). ``others`` are checked too but generate none."""
    generating = list(generating)
    prefixes = set(generating)
    for name in [*generating, *others]:
        if _RESERVED.fullmatch(name):
            raise ValueError(f"{where}: the name {name!r} is reserved for graphopt's own inputs and outputs "
                             "(group<N>.<hyper>, found_inf, grad_scaler.<name>; see graphopt.names); rename it")
        for i, char in enumerate(name):
            if char == "." and name[:i] in prefixes:
                raise ValueError(f"{where}: the name {name!r} could be one graphopt generates for {name[:i]!r} "
                                 f"({name[:i]}.grad, .step, .new, .<state slot>, see graphopt.names); rename one "
                                 "of them")


def fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name.1``, ``name.2`` ... : the first not in ``taken``, which it joins."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}.{k}"
    taken.add(candidate)
    return candidate
