"""`Optimizer`: torch.optim's interface over compiled ONNX update graphs.

The facade holds param groups; each group's tensors live in flat buffers
(`graphopt.optim.flat`) that parameters, gradients and state are views of. A
``step()`` runs each group's compiled update (`graphopt.optim.execution`), which is
built once per *structure* (which transforms the group chains, which tensors have
gradients) and reused while only hyperparameter values change: those are scalar
inputs, read from ``param_groups`` at every step.

Everything that can be checked -- settings, gradients' shapes and dtypes, compiling and
binding each group's update -- is done for every group before any buffer (parameters,
state, step counts) is touched, so a step that raises for bad input changes
nothing. The update itself then runs in place, as torch's does; so an error raised by ONNX
Runtime *while* the updates run (out of memory, a device fault) cannot be undone: groups already
run keep their update and the failing group's buffers may be partly written (restore a checkpoint).

Public methods are serialized (`graphopt.optim.serial`): calls from several threads
run one at a time, each seeing the whole effect of the ones before.
"""

from __future__ import annotations

import operator
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np
import onnx

from graphopt import names
from graphopt.optim import validation
from graphopt.optim.execution import Executor
from graphopt.optim.flat import FlatGroup
from graphopt.optim.serial import serialized
from graphopt.parameter import Parameter, check_grad
from graphopt.runtime import Runtime
from graphopt.transforms import (AddWeightDecay, ClipByNorm, ClipByValue, DecoupledWeightDecay, Maximize,
                                 Scale, Transform, chain)
from graphopt.optim.schedules import CLOCK, INITIAL_LR, Schedule, ScheduledLearningRate
from graphopt.transforms.averaging import EMA, SLOT, SWA
from graphopt.update import GroupSpec, ParamSpec, build_update
from graphopt.update.guard import Guard


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()
"""Default of a hyperparameter that every param group must set (SGD's ``lr``)."""

GROUP_DEFAULTS = {"lr_mult": 1.0, "decay_mult": 1.0}

SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum", "swa_lr"})
"""Group entries that lr schedulers add (`graphopt.optim.lr_scheduler`): a loaded state dict may
have them or not, so that an optimizer can be restored before or after its scheduler is made."""

SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "variance", "row_var", "col_var")
"""State slots that are averages of squares: a loaded value must be >= 0."""
SECOND_MOMENTS += ("sum", "acc_delta")  # Adagrad's sum of squares, Adadelta's average of squared updates

UNIT_SCALARS = ("mu_product", "mu")
"""Per-tensor scalar slots that are products of factors in [0, 1] (NAdam's, ASGD's averaging
weight): a loaded value must lie in [0, 1]."""


class GroupLayout(NamedTuple):
    """One param group's update as the runtime needs it (``names_of[f][i]``: I/O name of a tensor)."""

    group: str
    flats: list[FlatGroup]
    transform: Transform
    hypers: dict[str, float]
    names_of: list[list[str]]


class Optimizer:
    """Base class of graphopt's optimizers.

    Subclasses give their ``defaults``, validate a group in `_validate` and say in
    `_transform` which chain of transforms updates it. Group entries that are numbers
    are hyperparameters (scalar graph inputs); `_hyper_aliases` splits tuples such as
    ``betas`` into named scalars.

    Options every optimizer takes (keyword arguments):

    * ``providers`` selects ONNX Runtime execution providers; ``runtime`` (a
      `graphopt.runtime.Runtime`) sets threads and chunk size as well.
    * ``skip_nonfinite`` (see below).
    * ``averaging``: `graphopt.optim.EMA` or `graphopt.optim.SWA`, an average of the weights kept
      in the state slot ``averaged`` and updated in the same graph call as the parameters
      (`graphopt.transforms.averaging`); `averaged_weights` gives it.

    ``skip_nonfinite=True`` guards every step: when any gradient (or gradient sum) the step would
    apply has a NaN or inf -- checked by a small graph over the gradients before anything is
    written -- the step is skipped whole: no parameter, state slot or step count of any group
    changes. ``found_inf`` says whether the last step was skipped, ``skipped_steps`` counts them;
    `export` then emits the same decision inside the update model (`graphopt.update.guard`).

    Thread safety: ``step``, ``zero_grad``, ``sum_grad``, ``add_param_group``, ``state``,
    ``state_dict``, ``load_state_dict`` and ``export`` hold the optimizer's re-entrant lock, so
    calls from several threads run one after another, never interleaved. Setting
    ``p.grad`` or changing ``param_groups`` from one thread while another steps is not covered.
    """

    _hyper_aliases: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, params: Iterable[Any] | None, defaults: Mapping[str, Any], *, providers: Any = None,
                 runtime: Runtime | None = None, skip_nonfinite: bool = False, averaging: EMA | SWA | None = None):
        self._lock = threading.RLock()  # taken by every public method (graphopt.optim.serial)
        validation.boolean(type(self).__name__, "skip_nonfinite", skip_nonfinite)
        self.skip_nonfinite = bool(skip_nonfinite)
        if averaging is not None and not isinstance(averaging, (EMA, SWA)):
            raise TypeError(f"{type(self).__name__}: averaging must be graphopt.optim.EMA or SWA, "
                            f"got {type(averaging).__name__}")
        self.averaging = averaging
        self._schedules: dict[int, Schedule] = {}  # group index -> its lr schedule (schedule_lr)
        self._python_schedulers: weakref.WeakSet = weakref.WeakSet()  # lr_scheduler objects driving this one
        self.found_inf = False  # whether the last step was skipped for a non-finite gradient
        self.skipped_steps = 0
        if runtime is not None and providers is not None:
            raise ValueError(f"{type(self).__name__}: give providers or runtime, not both")
        self.defaults = {**GROUP_DEFAULTS, **defaults}
        self.param_groups: list[dict[str, Any]] = []
        self._flats: list[list[FlatGroup]] = []  # per group: its tensors' flat buffers, one per dtype
        self._added: list[tuple[Parameter, ...]] = []  # per group: its 'params' as added (checked each step)
        self._names: dict[Parameter, str] = {}
        self._positions: dict[Parameter, tuple[int, int]] = {}  # (group index, index in group)
        self._runtime = runtime or Runtime(providers)
        self._executor = Executor(self._runtime)
        self._layout_cache: dict[int, tuple[tuple, GroupLayout]] = {}  # group -> (settings key, its layout)
        self._summing = False
        if params is not None:
            groups = list(params)
            if not groups:
                raise ValueError(f"{type(self).__name__}: got an empty parameter list")
            if not isinstance(groups[0], Mapping):
                groups = [{"params": groups}]
            for group in groups:
                self.add_param_group(group)

    # -- subclass interface ----------------------------------------------------

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        """Raise if a setting of ``group`` is out of range (``where`` names the group)."""

    def _transform(self, group: Mapping[str, Any]) -> Transform:  # pragma: no cover - abstract
        """The chain of transforms that updates ``group``, given its structural settings."""
        raise NotImplementedError

    # -- param groups ------------------------------------------------------------

    @serialized
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group; keys it leaves out take the optimizer's defaults.

        ``lr_mult`` and ``decay_mult`` (default 1) multiply the group's ``lr`` and
        ``weight_decay``. The group's parameters move into its flat buffers.
        """
        index = len(self.param_groups)
        where = f"{type(self).__name__} param group {index}"
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        params = [params] if isinstance(params, Parameter) else list(params or ())
        for key, default in self.defaults.items():
            group.setdefault(key, default)
            if group[key] is required:
                raise ValueError(f"{where}: {key!r} is required and has no default")
        new_names = self._check_params(params, where)
        self._check_group(group, where)
        flats = []
        for dtype in dict.fromkeys(p.dtype for p in params):
            flat = FlatGroup([p for p in params if p.dtype == dtype], self._runtime.chunk_size, self,
                             self._runtime.zeros)
            flats.append(flat)
        group["params"] = params
        self.param_groups.append(group)
        self._flats.append(flats)
        self._added.append(tuple(params))
        self._names.update(new_names)
        self._positions.update({p: (index, i) for i, p in enumerate(params)})

    def _check_params(self, params: list[Any], where: str) -> dict[Parameter, str]:
        names_taken = set(self._names.values())
        result: dict[Parameter, str] = {}
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{where}: params[{i}] must be a graphopt.Parameter, got {type(p).__name__}")
            if p in result or p in self._names:
                place = f"param group {self._positions[p][0]}" if p in self._positions else "this group"
                raise ValueError(f"{where}: {p!r} is already in {place}; a parameter may be in one group only")
            owner = p._owner() if p._owner is not None else None  # noqa: SLF001
            if owner is not None and owner is not self:
                raise ValueError(f"{where}: {p!r} already belongs to another optimizer; a parameter can be "
                                 "optimized by one optimizer at a time")
            name = p.name or f"p{len(self._names) + len(result)}"
            if name in names_taken:
                raise ValueError(f"{where}: two parameters are named {name!r}; names must be unique")
            names_taken.add(name)
            result[p] = name
        names.check_unambiguous(names_taken, where=where)
        return result

    def _check_group(self, group: Mapping[str, Any], where: str) -> None:
        for key in GROUP_DEFAULTS:
            validation.nonnegative(where, key, group[key])
        if CLOCK in group:
            validation.step_count(f"{where}: {CLOCK!r}", group[CLOCK])
        self._validate(group, where)

    def _check_unchanged_params(self, g: int, group: Mapping[str, Any]) -> None:
        """Raise if ``group['params']`` is no longer the list the group was given: its tensors live
        in flat buffers made when it was added, so an appended parameter would never be updated."""
        params, added = group["params"], self._added[g]
        if not isinstance(params, list) or len(params) != len(added) or not all(map(operator.is_, params, added)):
            raise ValueError(f"{type(self).__name__} param group {g}: 'params' changed after the group was added "
                             f"({len(added)} parameters then, {len(params) if isinstance(params, list) else params!r} "
                             "now); add parameters with add_param_group instead")

    def _parameters(self) -> list[Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def _use_runtime(self, runtime: Runtime) -> None:
        """Run on ``runtime`` from now on; only before any parameter is added."""
        if self.param_groups:
            raise ValueError(f"{type(self).__name__}: the runtime can only change before parameters are added")
        self._runtime = runtime
        self._executor = Executor(runtime)

    def _label(self, p: Parameter) -> str:
        g, i = self._positions[p]
        return f"parameter {self._names[p]!r} (params[{i}] of param group {g})"

    # -- gradients -------------------------------------------------------------

    @serialized
    def zero_grad(self, set_to_none: bool = False, *, reset: bool | None = None) -> None:
        """Zero every gradient in place, or drop it (``set_to_none``, alias ``reset``)."""
        if reset is not None:
            set_to_none = reset
        for p in self._parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.fill(0)

    @serialized
    def sum_grad(self) -> None:
        """Add the current gradients into a sum that the next ``step()`` uses instead.

        The first call after a step (or ever) starts a new sum; later calls add to it.
        """
        for flats in self._flats:
            for flat in flats:
                if not self._summing:
                    flat.summed = [False] * len(flat.params)
                sums = flat.sum_buffer()
                for i, p in enumerate(flat.params):
                    if p.grad is None:
                        continue
                    grad, total = self._stored_grad(p), flat.view(sums, i)
                    if flat.summed[i]:
                        total += grad
                    else:
                        np.copyto(total, grad)
                        flat.summed[i] = True
        self._summing = True

    accumulate_grad = sum_grad

    def _stored_grad(self, p: Parameter) -> np.ndarray:
        """``p``'s gradient in its flat buffer: there already (set through the setter, or written in
        place), or checked and copied there (it was set behind the setter)."""
        grad, storage = p._grad, p._grad_storage  # noqa: SLF001
        if grad is not storage:
            np.copyto(storage, check_grad(p, grad, self._label(p)))
            p._grad = storage  # noqa: SLF001
        return storage

    def _gradient_arrays(self) -> list[np.ndarray]:
        """The gradients the next step reads: a flat buffer whole where every tensor in it has one (its
        padding is zero), else each gradient's view (the buffer may hold stale values of tensors without)."""
        arrays = []
        for flats in self._flats:
            for flat, grads in zip(flats, self._gradients(flats)):
                if all(g is not None for g in grads):
                    arrays.append(flat.sums if self._summing else flat.grads)
                else:
                    arrays.extend(g for g in grads if g is not None)
        return arrays

    def _gradients(self, flats: list[FlatGroup]) -> list[list[np.ndarray | None]]:
        """Per flat buffer, each tensor's gradient (or gradient sum) view, or None."""
        if self._summing:
            return [[flat.view(flat.sums, i) if flat.summed[i] else None for i in range(len(flat.params))]
                    for flat in flats]
        return [[None if p.grad is None else self._stored_grad(p) for p in flat.params] for flat in flats]

    # -- the step ----------------------------------------------------------------

    @serialized
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient (or a summed one); return ``closure()``.

        With ``skip_nonfinite``, a step whose gradients hold a NaN or inf updates nothing
        (``found_inf`` is then True)."""
        loss = closure() if closure is not None else None
        # every group planned (compiled, checked, bound) before any buffer is touched
        layouts = self._layouts()
        gradients = [self._gradients(layout.flats) for layout in layouts]
        plans = [self._executor.plan(*layout, grads, self._summing) for layout, grads in zip(layouts, gradients)]
        if self.skip_nonfinite:
            self.found_inf = self._executor.any_nonfinite(self._gradient_arrays())
            if self.found_inf:
                self.skipped_steps += 1
                self._summing = False
                self._advance_schedules()
                return loss
        for plan in plans:
            plan.prepare()
        for plan in plans:
            plan.run()
        for plan in plans:
            plan.commit()
        self._summing = False
        self._advance_schedules()
        return loss

    def _layouts(self) -> list[GroupLayout]:
        """Every group's update as of now: validated settings, transform chain, buffers, names."""
        layouts = []
        for g, group in enumerate(self.param_groups):
            self._check_unchanged_params(g, group)
            layouts.append(self._layout(g, group))
        return layouts

    def _layout(self, g: int, group: Mapping[str, Any]) -> GroupLayout:
        """Group ``g``'s layout: the one made at an earlier step if its settings, lr schedule and weight
        average are equal immutable values (validated then), else validated and made now."""
        key = _settings_key(group, self._schedules.get(g), self.averaging)
        cached = self._layout_cache.get(g)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        self._check_group(group, f"{type(self).__name__} param group {g}")
        flats = self._flats[g]
        layout = GroupLayout(names.group(g), flats, self._chain(group, g), self._hyperparameters(group),
                             [[self._names[p] for p in flat.params] for flat in flats])
        if key is not None:
            self._layout_cache[g] = (key, layout)
        return layout

    def _chain(self, group: Mapping[str, Any], g: int) -> Transform:
        """Group ``g``'s update: its lr schedule's (if any), its optimizer's chain, then the weight
        average's (if any)."""
        schedule = self._schedules.get(g)
        return chain(ScheduledLearningRate(schedule) if schedule is not None else None, self._transform(group),
                     self.averaging.transform() if self.averaging else None)

    @serialized
    def schedule_lr(self, schedule: Schedule | None, group: int | None = None, *, clock: int = 0,
                    initial_lr: float | None = None) -> None:
        """Compute the lr of param group ``group`` (default: every group) inside the update graphs from
        now on, as ``schedule.lr(lr_clock, initial_lr)`` (`graphopt.optim.schedules`): ``initial_lr`` is
        the given one, else the ``initial_lr`` a scheduler set before, else the group's lr now;
        ``lr_clock`` starts at ``clock`` and counts the steps taken (one per ``step()``, skipped ones
        included). Both are group settings, so ``state_dict`` saves them; ``group['lr']`` shows the lr
        the next step uses and is not read. ``None`` stops scheduling (``lr`` keeps its last value).
        A torch-style scheduler with a closed form compiles itself this way: ``scheduler.compile()``."""
        indices = range(len(self.param_groups)) if group is None else [group]
        for g in indices:
            settings = self.param_groups[g]
            if schedule is None:
                self._schedules.pop(g, None)
                settings.pop(CLOCK, None)
                continue
            if not isinstance(schedule, Schedule):
                raise TypeError(f"{type(self).__name__}.schedule_lr: expected a graphopt.optim.schedules.Schedule, "
                                f"got {type(schedule).__name__}")
            validation.step_count(f"{type(self).__name__}.schedule_lr: clock", clock)
            if initial_lr is not None:
                settings[INITIAL_LR] = validation.as_float(f"{type(self).__name__}.schedule_lr", "initial_lr",
                                                           initial_lr)
            settings.setdefault(INITIAL_LR, settings["lr"])
            settings[CLOCK] = int(clock)
            self._schedules[g] = schedule
            settings["lr"] = schedule.value(settings[CLOCK], settings[INITIAL_LR])

    def _advance_schedules(self) -> None:
        """After a step: every scheduled group's clock + 1, and its ``lr`` the next step's."""
        for g, schedule in self._schedules.items():
            settings = self.param_groups[g]
            settings[CLOCK] += 1
            settings["lr"] = schedule.value(settings[CLOCK], settings[INITIAL_LR])

    def _hyperparameters(self, group: Mapping[str, Any]) -> dict[str, float]:
        """The group's numeric settings as named scalars (``betas`` -> ``beta1``, ``beta2``), and the
        weight average's."""
        values = self.averaging.hypers() if self.averaging else {}
        for key, value in group.items():
            if key in self._hyper_aliases:  # an entry that is None (Adafactor's eps1) is left out
                values.update((name, float(v)) for name, v in zip(self._hyper_aliases[key], value) if v is not None)
            elif key != "params" and not isinstance(value, (bool, np.bool_, str, type(None))):
                values[key] = float(value)
        return values

    # -- state -------------------------------------------------------------------

    @property
    @serialized
    def state(self) -> dict[Parameter, dict[str, Any]]:
        """Per-parameter state, as torch shows it: ``{'step': int, slot: array, ...}``.

        The arrays are views of the live state buffers (copies, for state kept on a
        GPU); per-tensor scalar slots (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``, 0-d
        tensors in torch) are Python floats. Parameters that never took a step have no entry.
        """
        result = {}
        for flats in self._flats:
            for flat in flats:
                slots = {name: flat.read_slot(name) for name in flat.slots}
                for i, p in enumerate(flat.params):
                    if flat.steps[i]:
                        result[p] = {"step": flat.steps[i], **{k: flat.view(b, i) for k, b in slots.items()},
                                     **{k: values[i] for k, values in flat.scalar_slots.items()},
                                     **flat.shaped_slots[i]}
        return result

    @serialized
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of state and settings made of numpy arrays and Python scalars only.

        ``{'state': {index: {'step': int, slot: array or float}}, 'param_groups': [{..., 'params': [index]}],
        'class': name}`` with parameters numbered in group order, as in torch; ``class`` (the
        optimizer's class name) lets `load_state_dict` refuse another optimizer's state.
        """
        for g, group in enumerate(self.param_groups):
            self._check_unchanged_params(g, group)
        index = {p: i for i, p in enumerate(self._parameters())}
        state = {index[p]: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in entry.items()}
                 for p, entry in self.state.items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[p] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups, "class": type(self).__name__}

    @serialized
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`; raises, changing nothing, if anything in it is wrong.

        Refused: another optimizer class's state dict (its ``class`` entry; a dict without one, as
        older graphopt wrote, is accepted only if every group's settings have exactly this
        optimizer's keys), another group layout, out-of-range settings, and state that would
        poison the run: a step that is not a whole number >= 0, a slot of the wrong shape or
        with a non-finite value, a negative second moment (``exp_avg_sq``, ``max_exp_avg_sq``,
        ``square_avg``, ``variance``, ``row_var``, ``col_var``), a per-tensor scalar that is not a
        finite real number (a float or a 0-d array) or, for ``mu_product`` and ``mu``, not in
        [0, 1]. Everything is checked before anything changes.
        """
        self._apply_loaded(*self._validated(state_dict))

    def _validated(self, state_dict: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[Parameter, tuple]]:
        """The groups' settings and the parameters' (step, slots) that ``state_dict`` holds, all checked."""
        kind = type(self).__name__
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict) \
                or not set(state_dict) <= {"state", "param_groups", "class"}:
            raise ValueError(f"{kind}.load_state_dict: expected a dict with keys 'state', 'param_groups' "
                             f"and 'class', got {type(state_dict).__name__}"
                             f"{sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else ''}")
        saved_class = state_dict.get("class", kind)
        if saved_class != kind:
            raise ValueError(f"{kind}.load_state_dict: the state dict is from {saved_class}, this optimizer is "
                             f"{kind}; another optimizer's state cannot be loaded")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{kind}.load_state_dict: the state dict has {len(saved_groups)} param groups, "
                             f"this optimizer {len(self.param_groups)}")
        params = self._parameters()
        groups = [self._loaded_group(g, saved, kind) for g, saved in enumerate(saved_groups)]
        states = {}
        for i, saved in dict(state_dict["state"]).items():
            index = _index(i, f"{kind}.load_state_dict: state key")
            loaded = self._loaded_state(index, saved, params, groups, kind)
            states[params[index]] = loaded
        return groups, states

    def _apply_loaded(self, groups: list[dict[str, Any]], states: dict[Parameter, tuple]) -> None:
        for group, loaded in zip(self.param_groups, groups):
            group.update(loaded)
        for g, (group, flats) in enumerate(zip(self.param_groups, self._flats)):
            transform = self._chain(group, g)
            for flat in flats:
                loaded = [states.get(p, (0, {}, {}, {})) for p in flat.params]
                flat.steps = [step for step, *_ in loaded]
                for name in set(flat.slots).union(*(slots for _, slots, _, _ in loaded)):
                    flat.write_slot(name, {i: slots[name] for i, (_, slots, _, _) in enumerate(loaded)
                                           if name in slots})
                flat.scalar_slots = {name: [scalars.get(name, initial) for _, _, scalars, _ in loaded]
                                     for name, initial in transform.scalar_slots().items()}
                flat.shaped_slots = [{name: np.array(a, flat.dtype) for name, a in shaped.items()}
                                     for _, _, _, shaped in loaded]
        self._summing = False

    def _loaded_group(self, g: int, saved: Mapping[str, Any], kind: str) -> dict[str, Any]:
        where = f"{kind}.load_state_dict: param group {g}"
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise ValueError(f"{where}: expected a dict with 'params', got {type(saved).__name__}")
        group = self.param_groups[g]
        expected, got = set(group) - {"params"} - SCHEDULER_KEYS, set(saved) - {"params"} - SCHEDULER_KEYS
        if expected != got:
            raise ValueError(f"{where}: settings differ (missing {sorted(expected - got)}, "
                             f"unexpected {sorted(map(str, got - expected))}); is it another optimizer's state dict?")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"{where}: has {len(saved['params'])} parameters, this group {len(group['params'])}")
        loaded = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"}
        self._check_group({**group, **loaded}, where)
        return loaded

    def _loaded_state(self, i: int, saved: Mapping[str, Any], params: list[Parameter],
                      groups: list[dict[str, Any]], kind: str) -> tuple[int, dict, dict, dict]:
        """``(step, flat slots, scalar slots, shaped slots)`` of parameter ``i``, checked."""
        if not 0 <= i < len(params):
            raise ValueError(f"{kind}.load_state_dict: state for parameter index {i}, but there are {len(params)}")
        p = params[i]
        where = f"{kind}.load_state_dict: state of {self._label(p)}"
        g = self._positions[p][0]
        transform = self._chain({**self.param_groups[g], **groups[g]}, g)
        shapes = {**{slot: p.shape for slot in transform.all_slots()}, **transform.shaped_slots(p.shape)}
        scalar_slots = transform.scalar_slots()
        allowed = {*shapes, *scalar_slots}
        if not isinstance(saved, Mapping) or set(saved) - allowed - {"step"} or "step" not in saved:
            got = sorted(map(str, saved)) if isinstance(saved, Mapping) else type(saved).__name__
            raise ValueError(f"{where}: expected 'step' and slots {sorted(allowed)}, got {got}; "
                             "is it another optimizer's state dict?")
        slots, scalars, shaped = {}, {}, {}
        for slot in set(saved) - {"step"}:
            if slot in scalar_slots:
                scalars[slot] = validation.scalar_state(where, slot, saved[slot], unit=slot in UNIT_SCALARS)
                continue
            array = np.asarray(saved[slot])
            if array.shape != shapes[slot] or array.dtype.kind != "f":
                raise ValueError(f"{where}: slot {slot!r} must be a float array of shape {shapes[slot]}, "
                                 f"got {array.dtype} {array.shape}")
            validation.finite_state(where, slot, array, nonnegative=slot in SECOND_MOMENTS)
            (slots if slot in transform.all_slots() else shaped)[slot] = array
        return validation.step_count(where, saved["step"]), slots, scalars, shaped

    @serialized
    def averaged_weights(self) -> dict[Parameter, np.ndarray]:
        """Copies of each parameter's weight average (``averaging``); a parameter not averaged yet
        (before its first averaging step) gives its current value."""
        if self.averaging is None:
            raise ValueError(f"{type(self).__name__}.averaged_weights: the optimizer was built without averaging "
                             "(pass averaging=graphopt.optim.EMA(...) or SWA(...))")
        result = {}
        for flats in self._flats:
            for flat in flats:
                values = flat.read_slot(SLOT) if SLOT in flat.slots else None
                for i, p in enumerate(flat.params):
                    averaged = values is not None and flat.steps[i] > self.averaging.start
                    result[p] = (flat.view(values, i) if averaged else p.data).copy()
        return result

    # -- export --------------------------------------------------------------------

    @serialized
    def export(self, path: str | None = None) -> onnx.ModelProto:
        """The update model of all current param groups, as an ONNX model (saved if ``path``).

        Its inputs and outputs are named as `graphopt.names` describes; hyperparameters
        are float64 scalar inputs. State starts at zeros and steps at 0, except the per-tensor
        scalar slots, which start at their transform's initial values (``mu_product`` and ASGD's
        ``mu`` at 1; ASGD's ``eta`` is ignored before the first step).
        """
        specs = []
        for g, group in enumerate(self.param_groups):
            self._check_group(group, f"{type(self).__name__} param group {g}")
            self._check_unchanged_params(g, group)
            if group["params"]:
                params = tuple(ParamSpec(self._names[p], p.shape, p.dtype) for p in group["params"])
                specs.append(GroupSpec(names.group(g), self._chain(group, g), params))
        self._warn_python_schedulers("export")
        model = build_update(specs, doc_string=f"graphopt {type(self).__name__} update; "
                                               "I/O names: see graphopt.names",
                             guard=Guard() if self.skip_nonfinite else None)
        if path is not None:
            onnx.save(model, path)
        return model

    def _warn_python_schedulers(self, where: str) -> None:
        """Say that the lr of an exported model does not follow a scheduler that stays in Python."""
        for scheduler in list(self._python_schedulers):
            if not scheduler._compiled:  # noqa: SLF001
                how = "compile it with scheduler.compile()" if scheduler.has_closed_form else \
                    "it has no closed form, so feed the lr yourself"
                warnings.warn(f"{type(self).__name__}.{where}: {type(scheduler).__name__} sets the lr in Python; "
                              f"the exported model reads it from its input group<g>.lr and does not follow the "
                              f"schedule ({how})", UserWarning, stacklevel=3)

    @property
    def sessions_built(self) -> int:
        """How many ONNX Runtime sessions this optimizer compiled so far."""
        return self._runtime.sessions_built

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            settings = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {g}: {len(group['params'])} params, {settings}")
        return "\n".join(lines + [")"])


def gradient_transforms(group: Mapping[str, Any]) -> list[Transform | None]:
    """What every optimizer first does to a gradient, in order: the seeds' ``scale``,
    clipping by value and by L2 norm, then torch's ``maximize``; each only when on."""
    return [
        Scale() if group["scale"] != 1 else None,
        ClipByValue() if group["clip_value"] != 0 else None,
        ClipByNorm(per_tensor=bool(group["clip_per_tensor"])) if group["clip_norm"] != 0 else None,
        Maximize() if group["maximize"] else None,
    ]


def weight_decay_transform(group: Mapping[str, Any], decoupled: bool) -> Transform | None:
    """The group's weight decay, when ``weight_decay`` is not 0: decoupled (AdamW's, on the parameter)
    or coupled (an L2 term added to the gradient)."""
    if group["weight_decay"] == 0:
        return None
    return DecoupledWeightDecay() if decoupled else AddWeightDecay()


def validate_gradient_settings(group: Mapping[str, Any], where: str) -> None:
    validation.as_float(where, "scale", group["scale"])
    validation.nonnegative(where, "clip_value", group["clip_value"])
    validation.nonnegative(where, "clip_norm", group["clip_norm"])
    validation.boolean(where, "clip_per_tensor", group["clip_per_tensor"])
    validation.boolean(where, "maximize", group["maximize"])


def _settings_key(group: Mapping[str, Any], schedule: Schedule | None, averaging: EMA | SWA | None) -> tuple | None:
    """What a group's layout depends on, as a comparable value; None if a setting could change without
    the group changing (a mutable value, such as a 0-d array an lr is written into), so nothing is cached."""
    items = tuple((key, _frozen(value)) for key, value in group.items() if key != "params")
    if any(value is None for _, value in items):
        return None
    return items, schedule, averaging


def _frozen(value: Any) -> tuple | None:
    """``value`` with its type (so ``True`` and ``1`` differ), tuples element by element; None if mutable."""
    kind = type(value)
    if kind in _PLAIN or isinstance(value, np.generic):
        return kind, value
    if kind is tuple:
        parts = tuple(_frozen(v) for v in value)
        return None if None in parts else (tuple, parts)
    return None


_PLAIN = frozenset({bool, int, float, str, type(None)})


def _index(key: Any, where: str) -> int:
    """A state dict's parameter index (an int, or a string of one, as JSON gives)."""
    try:
        index = int(key)
    except (TypeError, ValueError):
        index = None
    if index is None or isinstance(key, (bool, float)) or index != key and str(index) != key:
        raise ValueError(f"{where} {key!r} is not a parameter index")
    return index
