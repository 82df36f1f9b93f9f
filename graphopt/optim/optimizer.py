"""`Optimizer`: torch.optim's interface over one compiled ONNX update graph.

The facade holds numpy-backed parameters and their param groups; each ``step()``
runs one ONNX Runtime session that updates every group. The session is compiled
once per *structure* (which transforms the groups chain, which tensors have
gradients) and reused while only hyperparameter values change: those are scalar
inputs, fed from ``param_groups`` at every step.

A step is all-or-nothing: inputs are validated first, outputs are written to
buffers of the runtime, and parameters and state change only after the run
succeeded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx

from graphopt import names
from graphopt.optim import validation
from graphopt.parameter import Parameter, check_grad
from graphopt.runtime import Buffer, Executable, Runtime
from graphopt.transforms import ClipByNorm, ClipByValue, Maximize, Scale, Transform
from graphopt.update import GroupSpec, ParamSpec, build_update


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()
"""Default of a hyperparameter that every param group must set (SGD's ``lr``)."""

GROUP_DEFAULTS = {"lr_mult": 1.0, "decay_mult": 1.0}
_COMPILED_CACHE_SIZE = 8


@dataclass
class _ParamState:
    """Per-parameter optimizer state: its step count and one buffer per state slot.

    ``spare`` holds a second buffer per slot: a step writes the new state there and
    the two are swapped once the step has succeeded (ping-pong).
    """

    step: int = 0
    slots: dict[str, Buffer] = field(default_factory=dict)
    spare: dict[str, Buffer] = field(default_factory=dict)
    new_param: np.ndarray | None = None


@dataclass
class _GroupPlan:
    """One group's part of a step: its settings, the parameters updated, their spec."""

    group: dict[str, Any]
    params: list[Parameter]
    spec: GroupSpec


class Optimizer:
    """Base class of graphopt's optimizers.

    Subclasses give their ``defaults``, validate a group in `_validate` and say in
    `_transform` which chain of transforms updates it. Group entries that are numbers
    are hyperparameters (scalar graph inputs); `_hyper_aliases` splits tuples such as
    ``betas`` into named scalars.
    """

    _hyper_aliases: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, params: Iterable[Any] | None, defaults: Mapping[str, Any], *,
                 providers: Any = None):
        self.defaults = {**GROUP_DEFAULTS, **defaults}
        self.param_groups: list[dict[str, Any]] = []
        self._states: dict[Parameter, _ParamState] = {}
        self._names: dict[Parameter, str] = {}
        self._positions: dict[Parameter, tuple[int, int]] = {}  # (group index, index in group)
        self._runtime = Runtime(providers)
        self._compiled: OrderedDict[Any, Executable] = OrderedDict()
        self._grad_sums: dict[Parameter, np.ndarray] = {}
        self._spare_sums: dict[Parameter, np.ndarray] = {}
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

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group; keys it leaves out take the optimizer's defaults.

        ``lr_mult`` and ``decay_mult`` (default 1) multiply the group's ``lr`` and
        ``weight_decay``.
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
        group["params"] = params
        self.param_groups.append(group)
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
            name = p.name or f"p{len(self._names) + len(result)}"
            if name in names_taken:
                raise ValueError(f"{where}: two parameters are named {name!r}; names must be unique")
            names_taken.add(name)
            result[p] = name
        return result

    def _check_group(self, group: Mapping[str, Any], where: str) -> None:
        for key in GROUP_DEFAULTS:
            validation.nonnegative(where, key, group[key])
        self._validate(group, where)

    def _parameters(self) -> list[Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    # -- gradients -------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = False, *, reset: bool | None = None) -> None:
        """Zero every gradient in place, or drop it (``set_to_none``, alias ``reset``)."""
        if reset is not None:
            set_to_none = reset
        for p in self._parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.fill(0)

    def sum_grad(self) -> None:
        """Add the current gradients into a sum that the next ``step()`` uses instead.

        The first call after a step (or ever) starts a new sum; later calls add to it.
        """
        if not self._summing:  # a new sum: reuse the old buffers, forget which params had one
            self._spare_sums, self._grad_sums = self._grad_sums, {}
        for p in self._parameters():
            if p.grad is None:
                continue
            grad = check_grad(p, p.grad, self._label(p))
            if p in self._grad_sums:
                self._grad_sums[p] += grad
            else:
                buffer = self._spare_sums.pop(p, None)
                self._grad_sums[p] = grad.copy() if buffer is None else _copy_into(buffer, grad)
        self._summing = True

    accumulate_grad = sum_grad

    def _gradients(self) -> dict[Parameter, np.ndarray]:
        if self._summing:
            return dict(self._grad_sums)
        return {p: check_grad(p, p.grad, self._label(p)) for p in self._parameters() if p.grad is not None}

    def _label(self, p: Parameter) -> str:
        g, i = self._positions[p]
        return f"parameter {self._names[p]!r} (params[{i}] of param group {g})"

    # -- the step ----------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient (or a summed one); return ``closure()``."""
        loss = closure() if closure is not None else None
        grads = self._gradients()
        plan = self._plan(lambda p: p in grads)
        if not plan:
            self._summing = False
            return loss
        executable = self._executable(plan)
        feeds, outputs, new_states = self._bind(plan, grads)
        executable.run(feeds, outputs)
        self._commit(plan, new_states)
        self._summing = False
        return loss

    def _plan(self, include: Callable[[Parameter], bool]) -> list[_GroupPlan]:
        """Validate every group and describe the tensors this step updates."""
        plan = []
        for g, group in enumerate(self.param_groups):
            self._check_group(group, f"{type(self).__name__} param group {g}")
            params = [p for p in group["params"] if include(p)]
            if params:
                specs = tuple(ParamSpec(self._names[p], p.shape, p.dtype) for p in params)
                plan.append(_GroupPlan(group, params, GroupSpec(names.group(g), self._transform(group), specs)))
        return plan

    def _executable(self, plan: list[_GroupPlan]) -> Executable:
        key = tuple(item.spec for item in plan)
        if key in self._compiled:
            self._compiled.move_to_end(key)
        else:
            self._compiled[key] = self._runtime.compile(build_update(key))
            if len(self._compiled) > _COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        return self._compiled[key]

    def _hyperparameters(self, group: Mapping[str, Any]) -> dict[str, float]:
        """The group's numeric settings as named scalars (``betas`` -> ``beta1``, ``beta2``)."""
        values = {}
        for key, value in group.items():
            if key in self._hyper_aliases:
                values.update(zip(self._hyper_aliases[key], (float(v) for v in value)))
            elif key != "params" and not isinstance(value, (bool, np.bool_, str, type(None))):
                values[key] = float(value)
        return values

    def _bind(self, plan: list[_GroupPlan], grads: Mapping[Parameter, np.ndarray]):
        """Inputs and outputs of one run; new state buffers are returned, not yet kept."""
        feeds: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        new_states: dict[Parameter, _ParamState] = {}
        for item in plan:
            for hyper, value in self._hyperparameters(item.group).items():
                feeds[names.hyper(item.spec.name, hyper)] = np.array(value, np.float64)
            slots = item.spec.transform.all_slots()
            for p, pspec in zip(item.params, item.spec.params):
                state = self._states.get(p) or new_states.setdefault(p, _ParamState())
                missing = [s for s in slots if s not in state.slots]
                if missing:  # new tensor, or a structure change that added a slot
                    state = new_states[p] = self._with_slots(p, state, missing)
                if state.new_param is None:
                    state.new_param = np.empty_like(p.data)
                feeds[pspec.name] = p.data
                feeds[names.grad(pspec.name)] = grads[p]
                feeds[names.step(pspec.name)] = np.array(state.step, np.float64)
                outputs[names.new(pspec.name)] = state.new_param
                outputs[names.new(names.step(pspec.name))] = np.empty((), np.float64)
                for slot in slots:
                    feeds[names.state(pspec.name, slot)] = state.slots[slot]
                    outputs[names.new(names.state(pspec.name, slot))] = state.spare[slot]
        return feeds, outputs, new_states

    def _with_slots(self, p: Parameter, state: _ParamState, slots: list[str]) -> _ParamState:
        extended = _ParamState(state.step, dict(state.slots), dict(state.spare), state.new_param)
        for slot in slots:
            extended.slots[slot] = self._runtime.zeros(p.shape, p.dtype)
            extended.spare[slot] = self._runtime.zeros(p.shape, p.dtype)
        return extended

    def _commit(self, plan: list[_GroupPlan], new_states: dict[Parameter, _ParamState]) -> None:
        self._states.update(new_states)
        for item in plan:
            slots = item.spec.transform.all_slots()
            for p in item.params:
                state = self._states[p]
                np.copyto(p.data, state.new_param)
                for slot in slots:
                    state.slots[slot], state.spare[slot] = state.spare[slot], state.slots[slot]
                state.step += 1

    # -- state -------------------------------------------------------------------

    @property
    def state(self) -> dict[Parameter, dict[str, Any]]:
        """Per-parameter state, as torch shows it: ``{'step': int, slot: array, ...}``.

        On the CPU the arrays are the live buffers (valid until the next step); on a
        GPU they are copies.
        """
        return {p: {"step": s.step, **{k: b.numpy() for k, b in s.slots.items()}} for p, s in self._states.items()}

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of state and settings made of numpy arrays and Python scalars only.

        ``{'state': {index: {'step': int, slot: array}}, 'param_groups': [{..., 'params': [index]}]}``
        with parameters numbered in group order, as in torch.
        """
        index = {p: i for i, p in enumerate(self._parameters())}
        state = {index[p]: {"step": s.step, **{k: b.numpy().copy() for k, b in s.slots.items()}}
                 for p, s in self._states.items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[p] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`; raises, changing nothing, if its layout does not match."""
        kind = type(self).__name__
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError(f"{kind}.load_state_dict: expected a dict with keys 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{kind}.load_state_dict: the state dict has {len(saved_groups)} param groups, "
                             f"this optimizer {len(self.param_groups)}")
        params = self._parameters()
        groups = [self._loaded_group(g, saved, kind) for g, saved in enumerate(saved_groups)]
        states = {params[int(i)]: self._loaded_state(int(i), saved, params, groups, kind)
                  for i, saved in state_dict["state"].items()}
        for group, loaded in zip(self.param_groups, groups):
            group.update(loaded)
        self._states = states
        self._grad_sums, self._summing = {}, False

    def _loaded_group(self, g: int, saved: Mapping[str, Any], kind: str) -> dict[str, Any]:
        where = f"{kind}.load_state_dict: param group {g}"
        group = self.param_groups[g]
        expected, got = set(group) - {"params"}, set(saved) - {"params"}
        if expected != got:
            raise ValueError(f"{where}: settings differ (missing {sorted(expected - got)}, "
                             f"unexpected {sorted(got - expected)}); is it another optimizer's state dict?")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"{where}: has {len(saved['params'])} parameters, this group {len(group['params'])}")
        loaded = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"}
        self._check_group({**group, **loaded}, where)
        return loaded

    def _loaded_state(self, i: int, saved: Mapping[str, Any], params: list[Parameter],
                      groups: list[dict[str, Any]], kind: str) -> _ParamState:
        if not 0 <= i < len(params):
            raise ValueError(f"{kind}.load_state_dict: state for parameter index {i}, but there are {len(params)}")
        p = params[i]
        where = f"{kind}.load_state_dict: state of {self._label(p)}"
        g = self._positions[p][0]
        allowed = set(self._transform({**self.param_groups[g], **groups[g]}).all_slots())
        unexpected = set(saved) - allowed - {"step"}
        if unexpected or "step" not in saved:
            raise ValueError(f"{where}: expected 'step' and slots {sorted(allowed)}, got {sorted(saved)}; "
                             "is it another optimizer's state dict?")
        state = _ParamState(step=int(saved["step"]))
        for slot in set(saved) - {"step"}:
            array = np.asarray(saved[slot])
            if array.shape != p.shape or array.dtype.kind != "f":
                raise ValueError(f"{where}: slot {slot!r} must be a float array of shape {p.shape}, "
                                 f"got {array.dtype} {array.shape}")
            state.slots[slot] = self._runtime.buffer(array.astype(p.dtype, copy=True))
            state.spare[slot] = self._runtime.zeros(p.shape, p.dtype)
        return state

    # -- export --------------------------------------------------------------------

    def export(self, path: str | None = None) -> onnx.ModelProto:
        """The update model of all current param groups, as an ONNX model (saved if ``path``).

        Its inputs and outputs are named as `graphopt.names` describes; hyperparameters
        are float64 scalar inputs. State starts at zeros and steps at 0.
        """
        specs = [item.spec for item in self._plan(lambda p: True)]
        model = build_update(specs, doc_string=f"graphopt {type(self).__name__} update; "
                                               "I/O names: see graphopt.names")
        if path is not None:
            onnx.save(model, path)
        return model

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


def _copy_into(buffer: np.ndarray, values: np.ndarray) -> np.ndarray:
    np.copyto(buffer, values)
    return buffer


def gradient_transforms(group: Mapping[str, Any]) -> list[Transform | None]:
    """What every optimizer first does to a gradient, in order: the seeds' ``scale``,
    clipping by value and by L2 norm, then torch's ``maximize``; each only when on."""
    return [
        Scale() if group["scale"] != 1 else None,
        ClipByValue() if group["clip_value"] != 0 else None,
        ClipByNorm(per_tensor=bool(group["clip_per_tensor"])) if group["clip_norm"] != 0 else None,
        Maximize() if group["maximize"] else None,
    ]


def validate_gradient_settings(group: Mapping[str, Any], where: str) -> None:
    validation.as_float(where, "scale", group["scale"])
    validation.nonnegative(where, "clip_value", group["clip_value"])
    validation.nonnegative(where, "clip_norm", group["clip_norm"])
    validation.boolean(where, "clip_per_tensor", group["clip_per_tensor"])
    validation.boolean(where, "maximize", group["maximize"])
