"""The transform protocol: state slots, a symbolic `apply`, and `chain` to compose them.

A transform is a small frozen dataclass. Its fields are *structure* (booleans such as
``nesterov``), so two equal transforms emit the same graph and the dataclass itself is
the cache key of a compiled update. Everything numeric a user may change between steps
is read through `Context.hyper`, which makes it a scalar graph input.

``apply(updates, ctx)`` receives one update `Sym` per tensor of a param group (the
gradients, for the first transform) and returns the transformed updates. The last
transform of an optimizer returns the step that is added to the parameters.

State comes in three kinds, all read with `Context.state` and written with `Context.set_state`:

* ``all_slots()``: tensors shaped like the parameter (``exp_avg``), kept in the param group's
  flat buffers, so they run on the chunked path too;
* ``scalar_slots()``: per-tensor scalars (NAdam's ``mu_product``, ASGD's ``eta``), name ->
  initial value, float64 graph inputs like the step count. On the chunked path a group's
  tensors share one value, which the facade allows only when every tensor's is equal;
* ``shaped_slots(shape)``: tensors of any other shape, or that only some tensors have
  (Adafactor's factored ``row_var`` / ``col_var``), name -> shape for a parameter of
  ``shape``. The facade keeps them per tensor, outside the flat buffers, and a chain that
  declares any runs per tensor only (`has_shaped_slots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from graphopt import names
from graphopt.symbolic import Graph, Sym, cast, sum_of_squares, where
from graphopt.symbolic.dtypes import SCALAR_DTYPE

Updates = list  # list[Sym], one per tensor of the group


class Transform:
    """Base class: declares state slots and emits its update rule with `apply`."""

    slots: tuple[str, ...] = ()

    def init(self, param: np.ndarray) -> dict[str, np.ndarray]:
        """Initial state of one parameter: every slot starts as zeros shaped like it."""
        return {slot: np.zeros_like(param) for slot in self.all_slots()}

    def all_slots(self) -> tuple[str, ...]:
        return self.slots

    def scalar_slots(self) -> Mapping[str, float]:
        """Per-tensor scalar state: name -> its value before the tensor's first step."""
        return MappingProxyType({})

    def shaped_slots(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """State not kept in flat buffers, for a parameter of ``shape``: name -> its shape (zeros at first)."""
        return {}

    def has_shaped_slots(self) -> bool:
        """Whether `shaped_slots` may declare any (then the chain cannot run chunked)."""
        return type(self).shaped_slots is not Transform.shaped_slots

    def apply(self, updates: Updates, ctx: Context) -> Updates:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Chain(Transform):
    """Apply ``transforms`` in order, each to the updates of the one before."""

    transforms: tuple[Transform, ...]

    def all_slots(self) -> tuple[str, ...]:
        return self._declared[0]

    def scalar_slots(self) -> Mapping[str, float]:
        return self._declared[1]

    @cached_property
    def _declared(self) -> tuple[tuple[str, ...], Mapping[str, float]]:
        """The state slots and the scalar slots of every transform in order, checked once for a name declared
        twice (a chain is frozen, so are its transforms' declarations; every step asks for them)."""
        slots: list[str] = []
        for t in self.transforms:
            for slot in t.all_slots():
                self._check_new(slot, slots)
                slots.append(slot)
        scalars: dict[str, float] = {}
        for t in self.transforms:
            for slot, initial in t.scalar_slots().items():
                self._check_new(slot, [*slots, *scalars])
                scalars[slot] = float(initial)
        return tuple(slots), MappingProxyType(scalars)

    def shaped_slots(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        taken, shaped = [*self.all_slots(), *self.scalar_slots()], {}
        for t in self.transforms:
            for slot, slot_shape in t.shaped_slots(shape).items():
                self._check_new(slot, [*taken, *shaped])
                shaped[slot] = tuple(slot_shape)
        return shaped

    def has_shaped_slots(self) -> bool:
        return any(t.has_shaped_slots() for t in self.transforms)

    @staticmethod
    def _check_new(slot: str, declared: Sequence[str]) -> None:
        if slot in declared or slot == "step":
            raise ValueError(f"state slot {slot!r} is declared by two transforms of one chain (or is 'step')")

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        for t in self.transforms:
            updates = t.apply(updates, ctx)
        return updates


def chain(*transforms: Transform | None) -> Chain:
    """Compose transforms; ``None`` entries (switched-off options) are left out."""
    return Chain(tuple(t for t in transforms if t is not None))


class Context:
    """What a transform sees while one param group's update is emitted.

    ``params[i]`` is the value the final update is added to; decoupled weight decay
    rewrites it. Hyperparameters and step counts are graph inputs, created on first use and
    named ``<group>.<hyper>`` and ``<param>.step``; ``state[i]`` holds tensor ``i``'s state
    inputs ``<param>.<slot>`` of every kind (a scalar slot's is a weak float64 scalar).
    ``masks[i]``, in a masked update (`graphopt.update.model`), is the bool scalar saying
    whether tensor ``i`` has a gradient this step; group-wide sums leave out the tensors that have none.
    """

    def __init__(self, graph: Graph, group: str, param_names: Sequence[str], params: Sequence[Sym],
                 state: Sequence[dict[str, Sym]], masks: Sequence[Sym | None] | None = None):
        self.graph = graph
        self.masks = list(masks) if masks is not None else [None] * len(params)
        self.group = group
        self.param_names = list(param_names)
        self.params = list(params)
        self.state_in = [dict(s) for s in state]
        self.state_out = [dict(s) for s in state]
        self._hypers: dict[str, Sym] = {}
        self._steps: dict[int, tuple[Sym, Sym]] = {}
        self.group_outputs: dict[str, Sym] = {}  # a group's own outputs (its schedule's clock), by name

    def hyper(self, name: str) -> Sym:
        """The group's hyperparameter ``name``: a float64 scalar input ``<group>.<name>``."""
        if name not in self._hypers:
            self._hypers[name] = self.graph.input(names.hyper(self.group, name), np.float64, (), weak=True)
        return self._hypers[name]

    def set_hyper(self, name: str, value: Sym) -> None:
        """Make ``value`` what `hyper` gives for ``name`` from now on (a schedule's lr)."""
        self._hypers[name] = value

    @property
    def hypers_used(self) -> tuple[str, ...]:
        return tuple(self._hypers)

    def step(self, i: int) -> Sym:
        """``t``: how many updates tensor ``i`` has had, this one included (1 on the first)."""
        if i not in self._steps:
            previous = self.graph.input(names.step(self.param_names[i]), np.float64, (), weak=True)
            self._steps[i] = (previous, previous + 1.0)
        return self._steps[i][1]

    def previous_step(self, i: int) -> Sym:
        """How many updates tensor ``i`` had before this one (the ``<param>.step`` input)."""
        self.step(i)
        return self._steps[i][0]

    @property
    def steps_used(self) -> dict[int, Sym]:
        return {i: t for i, (_, t) in self._steps.items()}

    def sum_of_squares(self, updates: Updates) -> Sym:
        """``sum(u ** 2)`` over every element of every tensor of the group (weak float64)."""
        total = None
        for u, mask in zip(updates, self.masks):
            square = self.tensor_sum_of_squares(u)
            if mask is not None:
                square = where(mask, square, 0.0)
            total = square if total is None else total + square
        return total

    def tensor_sum_of_squares(self, u: Sym) -> Sym:
        """``sum(u ** 2)`` over one tensor (weak float64)."""
        return cast(sum_of_squares(u), SCALAR_DTYPE, weak=True)

    def state(self, i: int, slot: str) -> Sym:
        """The current value of state ``slot`` of tensor ``i`` (as written so far this step)."""
        return self.state_out[i][slot]

    def accumulate(self, i: int, slot: str, decay: Sym, increment: Sym) -> Sym:
        """``slot <- decay * slot + increment`` for tensor ``i``; returns the new value.

        The moving averages and momentum buffers of every optimizer are written this
        way. Here it is emitted literally; a chunked update may store the slot scaled
        by a per-group scalar instead, which makes it a single pass.
        """
        value = decay * self.state(i, slot) + increment
        self.set_state(i, slot, value)
        return value

    def set_state(self, i: int, slot: str, value: Sym) -> None:
        """Write state ``slot`` of tensor ``i``: a tensor of the slot's shape, or a scalar for a scalar slot
        (kept as a weak float64 scalar)."""
        if slot not in self.state_in[i]:
            raise KeyError(f"state slot {slot!r} is not declared by any transform of group {self.group}")
        old = self.state_in[i][slot]
        if old.shape == () and old.weak:  # a scalar slot: float64, whatever it was computed from
            if value.shape != ():
                raise ValueError(f"scalar state slot {slot!r} of group {self.group} set to shape {list(value.shape)}")
            value = cast(value, SCALAR_DTYPE, weak=True)
        self.state_out[i][slot] = value
