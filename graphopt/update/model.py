"""Build the update model: one ONNX graph that updates every param group at once.

Inputs and outputs follow `graphopt.names`. For every tensor the model computes
``u = transform(grad)`` and ``p.new = p' + u``, where ``p'`` is ``p`` after decoupled
weight decay (or ``p`` itself). Only the hyperparameters and step counts that some
transform reads become inputs; every state slot of the chain is an input and an output: those
shaped like the parameter, the per-tensor scalars (float64, ``()``) and the slots of other
shapes, each with the shape its transform declares for that tensor (`Transform.shaped_slots`).

A *masked* group (``GroupSpec.masked``) has one more input per tensor, the 0-d bool
``p.has_grad``: where it is false the tensor is skipped as torch skips a tensor without
a gradient -- its gradient reads as zero, it adds nothing to a group-wide norm, and
``p.new``, every ``p.<slot>.new`` and ``p.step.new`` are its inputs unchanged, bit for
bit (``Where``). One masked graph thus serves every pattern of gradients in the group.

A *guarded* model (``guard``, `graphopt.update.guard`) skips the whole update -- every group --
when any gradient is NaN or inf, decided in the graph, and reports it as the output ``found_inf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from graphopt import names
from graphopt.symbolic import Graph, Sym, where
from graphopt.transforms import Context, Transform
from graphopt.update.guard import Guard, GuardEmitter


@dataclass(frozen=True)
class ParamSpec:
    """A tensor to update: its I/O name, static shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class GroupSpec:
    """A param group: its name, its transform chain and the tensors it updates this step."""

    name: str
    transform: Transform
    params: tuple[ParamSpec, ...]
    masked: bool = False  # one `has_grad` input per tensor (see the module docstring)


def build_update(groups: Sequence[GroupSpec], doc_string: str | None = None,
                 guard: Guard | None = None) -> onnx.ModelProto:
    """The update model for ``groups`` (see the module docstring for its contract)."""
    graph = Graph("graphopt_update")
    guarding = GuardEmitter(graph, guard) if guard is not None else None
    emitted = [_emit_group(graph, group, guarding) for group in groups]
    found = guarding.found() if guarding is not None else None
    for outputs in emitted:
        for name, mask, new, old in outputs:
            graph.output(name, _kept(_updated(mask, found), new, old))
    if guarding is not None:
        guarding.finish(found)
    return graph.to_model(doc_string=doc_string)


def _emit_group(graph: Graph, group: GroupSpec, guarding: GuardEmitter | None) -> list[tuple]:
    """Emit ``group``'s update; its outputs as ``(name, mask, new value, old value)``."""
    params, grads, state, masks = [], [], [], []
    for spec in group.params:
        params.append(graph.input(spec.name, spec.dtype, spec.shape))
        grads.append(graph.input(names.grad(spec.name), spec.dtype, spec.shape))
        state.append(state_inputs(graph, group.transform, spec))
        masks.append(graph.input(names.has_grad(spec.name), np.bool_, ()) if group.masked else None)
    grads = [_kept(mask, g, 0.0) for mask, g in zip(masks, grads)]
    if guarding is not None:
        grads = guarding.unscale(grads)
    ctx = Context(graph, group.name, [p.name for p in group.params], params, state, masks=masks)
    updates = group.transform.apply(grads, ctx)
    for name, value in ctx.group_outputs.items():  # a schedule's clock: advances even when a step is skipped
        graph.output(name, value)
    steps = ctx.steps_used
    outputs = []
    for i, (spec, mask) in enumerate(zip(group.params, masks)):
        outputs.append((names.new(spec.name), mask, ctx.params[i] + updates[i], params[i]))
        for slot in state[i]:
            outputs.append((names.new(names.state(spec.name, slot)), mask, ctx.state_out[i][slot], state[i][slot]))
        if i in steps:
            outputs.append((names.new(names.step(spec.name)), mask, steps[i], ctx.previous_step(i)))
    return outputs


def _updated(mask: Sym | None, found: Sym | None) -> Sym | None:
    """Whether a tensor takes its new values: it has a gradient and no gradient was non-finite."""
    if found is None:
        return mask
    finite = found.graph.op("Not", [found], dtype=np.dtype(bool), shape=())
    return finite if mask is None else found.graph.op("And", [mask, finite], dtype=np.dtype(bool), shape=())


def state_inputs(graph: Graph, transform: Transform, spec: ParamSpec) -> dict[str, Sym]:
    """The state inputs ``<param>.<slot>`` of one tensor: every slot of ``transform``, of each kind."""
    state = {slot: graph.input(names.state(spec.name, slot), spec.dtype, spec.shape) for slot in transform.all_slots()}
    for slot in transform.scalar_slots():
        state[slot] = graph.input(names.state(spec.name, slot), np.float64, (), weak=True)
    for slot, shape in transform.shaped_slots(spec.shape).items():
        state[slot] = graph.input(names.state(spec.name, slot), spec.dtype, shape)
    return state


def _kept(mask: Sym | None, new: Sym, old: Sym | float) -> Sym:
    """``new`` where ``mask`` holds (the tensor is updated this step), else ``old`` (``new`` if no mask)."""
    return new if mask is None else where(mask, new, old)
