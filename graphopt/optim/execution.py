"""Running one param group's update: the chunked fast path, or a graph per tensor.

A group takes the **chunked** path (`graphopt.update.chunked`) when every tensor of it has a
gradient, all have taken the same number of steps, all hold the same value of each per-tensor
scalar slot (`Transform.scalar_slots`) and its chain needs no per-tensor values: one Scan over
the rows of its flat buffers, split between threads, every output written in place where
`graphopt.update.inplace` proves it safe. Otherwise it takes the **per-tensor** path: an update
model of `graphopt.update` bound to views of the same flat buffers. Its graphs are cached per
group *structure* (transform chain and every tensor's name, shape and dtype): the first
`_PATTERNS` patterns of gradients a structure meets each get a graph over just the tensors that
have gradients; every later pattern runs one *masked* graph over all the group's tensors, told
by a bool input per tensor which ones to skip. So the number of compilations is bounded
whatever the pattern (at most ``_PATTERNS + 1`` per structure), while a stable pattern such as
a frozen subset still updates only the tensors it must.

A step plans every group before it touches any: planning compiles, validates and binds
(anything that can raise), yet writes no parameter, state slot or step count and adds no slot
(a slot a group's chain gains is allocated aside, `NewSlots`). Then ``prepare()`` (which cannot
fail) adds those slots and writes the bound scalar inputs, ``run()`` updates in place and
``commit()`` advances the step counts and stores the new values of the per-tensor scalar slots
(outputs of the run, like the step counts kept in `FlatGroup`). So a step that fails while
planning any group leaves every group as it was.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from graphopt import names
from graphopt.fused.runtime import fused_update
from graphopt.update.chunked import (
    GRADS,
    PARAMS,
    SUM_OF_SQUARES,
    ChunkedModels,
    ChunkedSpec,
    NotChunkable,
    build_chunked,
)
from graphopt.update.guard import nonfinite_check_model
from graphopt.update.inplace import proven_in_place
from graphopt.optim.flat import FlatGroup
from graphopt.optim.schedules import CLOCK
from graphopt.runtime import Executable, Runtime
from graphopt.runtime.parallel import RowParallel
from graphopt.transforms import Transform
from graphopt.update import GroupSpec, ParamSpec, build_update

_CACHE_SIZE = 8  # compiled graphs of the functional forms' structures kept (least recently used dropped)
_PATTERNS = 3  # patterns of gradients a group structure gets an exact graph for; later ones run masked
_STRUCTURES = 8  # group structures (per group) whose per-tensor graphs are kept


class _GroupGraphs:
    """The per-tensor graphs of one group structure: exact ones by pattern, and the masked one."""

    def __init__(self):
        self.exact: dict[tuple[int, ...], tuple[Executable, set]] = {}  # active tensors' indices -> graph
        self.masked: tuple[Executable, set] | None = None


class Executor:
    """Compiled updates and their bindings, cached by structure."""

    def __init__(self, runtime: Runtime, patterns: int = _PATTERNS):
        self.runtime = runtime
        self.patterns = patterns  # exact per-tensor graphs per group structure, before the masked one
        self._chunked: dict[ChunkedSpec, tuple | None] = {}
        self._per_tensor: OrderedDict[GroupSpec, tuple[Executable, set]] = OrderedDict()
        self._groups: dict[str, OrderedDict[GroupSpec, _GroupGraphs]] = {}
        self._checks: dict[np.dtype, Executable] = {}  # the non-finite check, per dtype

    def plan(self, group: str, flats: list[FlatGroup], transform: Transform, hypers: Mapping[str, float],
             names_of: list[list[str]], grads: list[list[np.ndarray | None]], summing: bool) -> _Plan:
        """How ``group`` is updated this step.

        ``grads[f][i]`` is the gradient of tensor ``i`` of ``flats[f]`` (a view of the flat
        gradient buffer, or of the sum buffer when ``summing``), or None.
        """
        if all(g is not None for gs in grads for g in gs) and len({s for f in flats for s in f.steps}) == 1 \
                and _uniform_scalars(flats, transform):
            compiled = [self._compiled_chunked(ChunkedSpec(group, transform, f.dtype, f.row)) for f in flats]
            if all(c is not None for c in compiled):
                return _ChunkedPlan(self, group, flats, transform, hypers, compiled, summing)
        return _TensorPlan(self, group, flats, transform, hypers, grads, names_of)

    def any_nonfinite(self, arrays: list[np.ndarray]) -> bool:
        """Whether any element of ``arrays`` is NaN or inf, by `graphopt.update.guard.nonfinite_check_model`
        (one run per array)."""
        for array in arrays:
            if array.dtype not in self._checks:
                self._checks[array.dtype] = self.runtime.compile(nonfinite_check_model(array.dtype))
            (found,) = self._checks[array.dtype].session.run(None, {"x": array.reshape(-1)})
            if found:
                return True
        return False

    def _compiled_chunked(self, spec: ChunkedSpec):
        if spec not in self._chunked:
            try:
                models = build_chunked(spec)
            except NotChunkable:
                self._chunked[spec] = None
            else:
                self._chunked[spec] = self._compile_chunked(spec, models)
        return self._chunked[spec]

    def _compile_chunked(self, spec: ChunkedSpec, models: ChunkedModels) -> _Compiled:
        """The update, its reduction, its in-place pairs and row ranges: the fused kernels where `fused_update`
        gives them, else the standard operators.

        A standard update runs as ``threads`` row ranges at once, each a one-thread session run from its own
        Python thread (`RowParallel`); a fused kernel runs whole in one call, split over the session's
        ``threads`` intra-op threads by the kernel itself (a 1M-parameter SGD step took 0.30 ms instead of
        0.50 ms, docs/PERFORMANCE.md). Its threads do not spin after a run: spinning, they took the cores from
        the next session (a Trainer's forward and backward ran at half speed). A reduction runs as row ranges
        either way (the kernel sums on one thread)."""
        fused = fused_update(self.runtime, models)
        update_model, update_kernel, reduce_model, reduce_kernel = \
            (models.update, None, models.reduce, None) if fused is None else fused
        ranges = self.runtime.threads if update_kernel is None else 1
        update = self.runtime.compile(update_model, intra_op_threads=1 if update_kernel is None else
                                      self.runtime.threads, keep_optimized=True, kernel=update_kernel,
                                      spinning=False)
        reduce = None if reduce_model is None else self.runtime.compile(reduce_model, intra_op_threads=1,
                                                                          kernel=reduce_kernel)
        pairs = [(PARAMS, names.new(PARAMS))] + [(s, names.new(s)) for s in spec.transform.all_slots()]
        return _Compiled(update, reduce, proven_in_place(update_model, update, pairs), ranges)

    def per_tensor(self, spec: GroupSpec) -> tuple[Executable, set]:
        """The compiled update of exactly ``spec`` (the functional forms' cache)."""
        if spec in self._per_tensor:
            self._per_tensor.move_to_end(spec)
        else:
            self._per_tensor[spec] = self._compile(spec)
            if len(self._per_tensor) > _CACHE_SIZE:
                self._per_tensor.popitem(last=False)
        return self._per_tensor[spec]

    def for_pattern(self, full: GroupSpec, active: tuple[int, ...]) -> tuple[Executable, set, bool]:
        """A per-tensor update of group structure ``full`` for the tensors ``active`` (indices into
        ``full.params``): ``(executable, in-place pairs, masked)``. A masked graph takes every
        tensor of ``full`` and a ``has_grad`` input each (see the module docstring)."""
        structures = self._groups.setdefault(full.name, OrderedDict())
        graphs = structures.get(full)
        if graphs is None:
            graphs = structures[full] = _GroupGraphs()
            if len(structures) > _STRUCTURES:
                structures.popitem(last=False)
        structures.move_to_end(full)
        if active in graphs.exact:
            return (*graphs.exact[active], False)
        if len(graphs.exact) < self.patterns:
            spec = GroupSpec(full.name, full.transform, tuple(full.params[i] for i in active))
            graphs.exact[active] = self._compile(spec)
            return (*graphs.exact[active], False)
        if graphs.masked is None:
            graphs.masked = self._compile(GroupSpec(full.name, full.transform, full.params, masked=True))
        return (*graphs.masked, True)

    def _compile(self, spec: GroupSpec) -> tuple[Executable, set]:
        model = build_update([spec])
        pairs = in_place_candidates(spec.params, spec.transform)
        executable = self.runtime.compile(model, keep_optimized=True)
        return executable, proven_in_place(model, executable, pairs)


def _uniform_scalars(flats: list[FlatGroup], transform: Transform) -> bool:
    """Whether every tensor of the group holds the same value of each scalar slot (or none yet)."""
    for slot in transform.scalar_slots():
        if len({v for f in flats for v in f.scalar_slots.get(slot, ())}) > 1:
            return False
    return True


class NewSlots:
    """State slots a plan binds before they exist: allocated while planning, added to their flat
    groups by `add` only once every group is planned, so a step that fails adds none. Scalar
    slots start at their declared initial value, shaped ones as zeros."""

    def __init__(self, allocate):
        self._allocate = allocate  # (size, dtype) -> a zero buffer, as FlatGroup allocates its slots
        self._pending: dict[tuple[int, str], tuple[FlatGroup, str, Any]] = {}
        self._scalars: dict[tuple[int, str], tuple[FlatGroup, str, list[float]]] = {}
        self._shaped: dict[tuple[int, int, str], tuple[dict, str, np.ndarray]] = {}

    def scalars(self, flat: FlatGroup, name: str, initial: float) -> list[float]:
        """Scalar slot ``name``'s values, one per tensor: the group's, or new ones added by `add`."""
        if name in flat.scalar_slots:
            return flat.scalar_slots[name]
        key = (id(flat), name)
        if key not in self._scalars:
            self._scalars[key] = (flat, name, [initial] * len(flat.params))
        return self._scalars[key][2]

    def shaped(self, flat: FlatGroup, i: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor ``i``'s shaped slot ``name``: the group's, or a new zero array added by `add`."""
        slots = flat.shaped_slots[i]
        if name in slots:
            return slots[name]
        key = (id(flat), i, name)
        if key not in self._shaped:
            self._shaped[key] = (slots, name, np.zeros(shape, flat.dtype))
        return self._shaped[key][2]

    def buffer(self, flat: FlatGroup, name: str):
        """Slot ``name``'s flat buffer: the group's, or a new zero one added by `add`."""
        if name in flat.slots:
            return flat.slots[name]
        key = (id(flat), name)
        if key not in self._pending:
            self._pending[key] = (flat, name, self._allocate(flat.data.size, flat.dtype))
        return self._pending[key][2]

    def add(self) -> None:
        for flat, name, buffer in self._pending.values():
            flat.slots.setdefault(name, buffer)
        for flat, name, values in self._scalars.values():
            flat.scalar_slots.setdefault(name, values)
        for slots, name, array in self._shaped.values():
            slots.setdefault(name, array)


class _Plan:
    def prepare(self) -> None:  # pragma: no cover - interface
        """Once every group is planned: what the run needs written first. Cannot fail."""
        raise NotImplementedError

    def run(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def commit(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def _scratch(buffer, name: str) -> np.ndarray:
    """Where an output that cannot overwrite ``buffer`` in place is written (then copied back)."""
    if not isinstance(buffer, np.ndarray):
        raise NotImplementedError(f"{name!r} cannot be updated in place, and copying device buffers back is not "
                                  "supported; write the transform so that each state slot is overwritten "
                                  "elementwise (see graphopt.update.inplace)")
    return np.empty_like(buffer)


def _scalar(store: dict[str, np.ndarray], name: str, value: float | None = None) -> np.ndarray:
    """The bound 0-d array for scalar input ``name`` (made once, never rebound), set to ``value`` if given."""
    array = store.get(name)
    if array is None:
        array = store[name] = np.zeros((), np.float64)
    if value is not None:
        array[...] = value
    return array


class _Compiled(NamedTuple):
    """A group structure's chunked update, compiled (`Executor._compile_chunked`)."""

    update: Executable
    reduce: Executable | None  # the group's sum of squares, where its chain needs one
    safe: set  # the (input, output) pairs proven to share a buffer safely
    ranges: int  # row ranges the update runs as (a fused kernel: 1, split over its session's threads)


class _Bound(NamedTuple):
    """A flat group's chunked update bound to its buffers (made once, reused every step)."""

    runner: RowParallel
    copies: list  # (written, target) pairs for outputs that could not be bound in place
    reduction: tuple | None  # (reduce runner, per-range partial sums) for a group-wide sum
    scalar_outputs: dict  # scalar slot -> its new value as each range wrote it (0-d arrays)


class _ChunkedPlan(_Plan):
    """All of a group's tensors, row by row, in place, split between threads."""

    def __init__(self, executor: Executor, group: str, flats: list[FlatGroup], transform: Transform,
                 hypers: Mapping[str, float], compiled, summing: bool):
        self.flats = flats
        self.group = group
        self.runs = []
        self.total_name = names.hyper(group, SUM_OF_SQUARES)
        self.hypers = hypers
        self.new_slots = NewSlots(executor.runtime.zeros)
        slots = transform.all_slots()
        self.scalar_values = {slot: self.new_slots.scalars(flats[0], slot, initial)[0]
                              for slot, initial in transform.scalar_slots().items()}  # equal for all tensors
        for flat in flats[1:]:
            for slot, initial in transform.scalar_slots().items():
                self.new_slots.scalars(flat, slot, initial)
        threads = executor.runtime.threads
        for flat, (update, reduce, safe, ranges) in zip(flats, compiled):
            key = (update, summing, slots)
            bound = flat.runners.get(key)
            if bound is None:  # cached by `prepare`, once every group is planned; its slots exist from then on
                for name in self._scalar_names(hypers, reduce is not None):
                    _scalar(flat.scalars, name)  # the arrays bound; `prepare` writes their values
                grad_rows = flat.rows(flat.sums if summing else flat.grads)
                buffers = {PARAMS: flat.rows(flat.data), **{s: flat.rows(self.new_slots.buffer(flat, s))
                                                            for s in slots}}
                bound = self._bind(update, reduce, buffers, grad_rows, flat.scalars, safe, (ranges, threads),
                                   [names.new(names.state(group, s)) for s in self.scalar_values])
            self.runs.append((flat, key, bound, reduce is not None))

    def _scalar_names(self, hypers: Mapping[str, float], reduces: bool) -> list[str]:
        return [*(names.hyper(self.group, k) for k in hypers), names.step(self.group),
                *(names.state(self.group, s) for s in self.scalar_values), *([self.total_name] if reduces else [])]

    def prepare(self) -> None:
        self.new_slots.add()
        for flat, key, bound, reduces in self.runs:
            flat.runners[key] = bound
            scalars = flat.scalars
            for name, value in self.hypers.items():
                _scalar(scalars, names.hyper(self.group, name), value)
            _scalar(scalars, names.step(self.group), flat.steps[0])
            for slot, value in self.scalar_values.items():
                _scalar(scalars, names.state(self.group, slot), value)
            if reduces:
                _scalar(scalars, self.total_name, 0.0)

    @staticmethod
    def _bind(update, reduce, buffers, grad_rows, scalars, safe, ranges, scalar_outputs):
        """``ranges``: how many row ranges the update and the reduction each run as."""
        rows = {GRADS: grad_rows, **buffers}
        copies = []
        for name, buffer in buffers.items():
            target = buffer if (name, names.new(name)) in safe else _scratch(buffer, name)
            rows[names.new(name)] = target
            if target is not buffer:
                copies.append((target, buffer))
        count = next(iter(rows.values())).shape[0]
        parts = len(RowParallel.ranges_for(count, ranges[0]))
        results = {name: [np.zeros((), np.float64) for _ in range(parts)] for name in scalar_outputs}
        runner = RowParallel(update, rows, scalars, ranges[0], results=results)
        reducer, partials = None, None
        if reduce is not None:
            partials = [np.zeros((), np.float64) for _ in RowParallel.ranges_for(count, ranges[1])]
            reducer = RowParallel(reduce, rows, scalars, ranges[1], results={SUM_OF_SQUARES: partials})
        return _Bound(runner, copies, (reducer, partials) if reducer is not None else None, results)

    def run(self, sum_over: Callable[[float], float] | None = None) -> None:
        """The group's sum of squares first if its chain needs one (``sum_over``: from this process's sum
        to the one the update uses, the sum over every process's shards under ZeRO-1), then the update."""
        reductions = [bound.reduction for _, _, bound, _ in self.runs if bound.reduction is not None]
        if reductions:  # the group's sum of squares, over all its flat buffers, feeds every update
            total = 0.0
            for reducer, partials in reductions:
                reducer.run()
                total += float(sum(partials))
            if sum_over is not None:
                total = sum_over(total)
            for flat in self.flats:
                flat.scalars[self.total_name][...] = total
        for flat, _, bound, _ in self.runs:
            bound.runner.run()
            for source, target in bound.copies:
                np.copyto(target, source)

    def commit(self) -> None:
        outputs = self.runs[0][2].scalar_outputs
        for flat in self.flats:
            flat.steps = [s + 1 for s in flat.steps]
            for slot in self.scalar_values:  # every range computed the same value (outside the Scan)
                flat.scalar_slots[slot] = [float(outputs[names.new(names.state(self.group, slot))][0])] \
                    * len(flat.params)


class TensorBindings:
    """Per-tensor I/O of an update (or training-step) graph, bound to views of flat buffers.

    For each tensor ``i`` of ``flats[f]`` in ``active``, named ``spec.name``: the parameter
    and every state slot of ``transform`` (written in place where ``safe`` allows, else through
    scratch arrays copied back by `finish`; its scalar slots as fresh 0-d arrays, stored back by
    `commit`), its step count, and the group's hyperparameters.
    Gradients are the caller's to add. With ``has_grad`` (a masked update graph), each
    tensor's ``has_grad`` input too, and `commit` advances only the tensors it marks.
    Given ``new_slots`` (a step's planning), missing slots are bound to buffers that
    ``new_slots`` adds later, once every group is planned; without, they are added here.
    """

    def __init__(self, group: str, active: list[tuple[FlatGroup, int]], specs: tuple[ParamSpec, ...],
                 transform: Transform, hypers: Mapping[str, float], safe: set, has_grad: list[bool] | None = None,
                 new_slots: NewSlots | None = None):
        self.active = active if has_grad is None else [a for a, on in zip(active, has_grad) if on]
        self.feeds: dict[str, Any] = {names.hyper(group, k): np.array(v, np.float64) for k, v in hypers.items()}
        self.outputs: dict[str, Any] = {}
        if CLOCK in hypers:  # a scheduled group's graph outputs its clock's next value (the facade counts it)
            self.outputs[names.new(names.hyper(group, CLOCK))] = np.empty((), np.float64)
        self.copies = []
        self.scalar_outputs: list[tuple[list[float], int, np.ndarray]] = []  # (a slot's values, tensor, output)
        later = new_slots is not None
        new_slots = new_slots or NewSlots(None)
        slots, scalar_slots, shaped = transform.all_slots(), transform.scalar_slots(), transform.has_shaped_slots()
        for k, ((flat, i), spec) in enumerate(zip(active, specs)):
            self.feeds[names.step(spec.name)] = np.array(flat.steps[i], np.float64)
            self.outputs[names.new(names.step(spec.name))] = np.empty((), np.float64)
            if has_grad is not None:
                self.feeds[names.has_grad(spec.name)] = np.array(has_grad[k])
            for s, initial in scalar_slots.items():
                values, name = new_slots.scalars(flat, s, initial), names.state(spec.name, s)
                self.feeds[name] = np.array(values[i], np.float64)
                self.outputs[names.new(name)] = np.empty((), np.float64)
                if has_grad is None or has_grad[k]:
                    self.scalar_outputs.append((values, i, self.outputs[names.new(name)]))
            slot = (lambda s, flat=flat: new_slots.buffer(flat, s)) if later else flat.slot
            pairs = [(spec.name, flat.view(flat.data, i))]
            pairs += [(names.state(spec.name, s), flat.view(slot(s), i)) for s in slots]
            if shaped:
                pairs += [(names.state(spec.name, s), new_slots.shaped(flat, i, s, shape))
                          for s, shape in transform.shaped_slots(spec.shape).items()]
            for name, view in pairs:
                self.feeds[name] = view
                target = view if (name, names.new(name)) in safe else _scratch(view, name)
                self.outputs[names.new(name)] = target
                if target is not view:
                    self.copies.append((target, view))
        if not later:
            new_slots.add()

    def finish(self) -> None:
        """After a successful run: copy back what was not written in place."""
        for source, target in self.copies:
            np.copyto(target, source)

    def commit(self) -> None:
        for flat, i in self.active:
            flat.steps[i] += 1
        for values, i, new in self.scalar_outputs:
            values[i] = float(new)


def in_place_candidates(specs: tuple[ParamSpec, ...], transform: Transform) -> list[tuple[str, str]]:
    """The (input, output) pairs of a per-tensor update that would share a buffer (not the scalar slots,
    fed as fresh 0-d arrays)."""
    pairs = [(p.name, names.new(p.name)) for p in specs]
    for p in specs:
        for s in (*transform.all_slots(), *transform.shaped_slots(p.shape)):
            pairs.append((names.state(p.name, s), names.new(names.state(p.name, s))))
    return pairs


class _TensorPlan(_Plan):
    """The tensors that have gradients, one update graph input per tensor, bound to views.

    The graph is exact for this pattern of gradients, or the group's masked one: then every
    tensor is bound, a tensor without a gradient with its gradient storage, which the graph
    does not read (``Where`` selects zero in its place)."""

    def __init__(self, executor: Executor, group: str, flats: list[FlatGroup], transform: Transform,
                 hypers: Mapping[str, float], grads, names_of):
        tensors = [(f, i) for f in flats for i in range(len(f.params))]
        given = [grads[flats.index(f)][i] for f, i in tensors]
        self.executable = None
        self.new_slots = NewSlots(executor.runtime.zeros)
        if all(g is None for g in given):
            return
        specs = tuple(ParamSpec(names_of[flats.index(f)][i], f.params[i].shape, f.dtype) for f, i in tensors)
        active = tuple(k for k, g in enumerate(given) if g is not None)
        self.executable, safe, masked = executor.for_pattern(GroupSpec(group, transform, specs), active)
        if masked:
            has_grad = [g is not None for g in given]
            self.bindings = TensorBindings(group, tensors, specs, transform, hypers, safe, has_grad,
                                           self.new_slots)
            given = [g if g is not None else f.view(f.grads, i) for (f, i), g in zip(tensors, given)]
        else:
            tensors, given = [tensors[k] for k in active], [given[k] for k in active]
            specs = tuple(specs[k] for k in active)
            self.bindings = TensorBindings(group, tensors, specs, transform, hypers, safe,
                                           new_slots=self.new_slots)
        for spec, grad in zip(specs, given):
            self.bindings.feeds[names.grad(spec.name)] = grad

    def prepare(self) -> None:
        if self.executable is not None:
            self.new_slots.add()

    def run(self) -> None:
        if self.executable is not None:
            self.executable.run(self.bindings.feeds, self.bindings.outputs)
            self.bindings.finish()

    def commit(self) -> None:
        if self.executable is not None:
            self.bindings.commit()
