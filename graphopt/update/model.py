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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from graphopt import names
from graphopt.symbolic import Graph, Sym, where
from graphopt.transforms import Context, Transform


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


def build_update(groups: Sequence[GroupSpec], doc_string: str | None = None) -> onnx.ModelProto:
    """The update model for ``groups`` (see the module docstring for its contract)."""
    graph = Graph("graphopt_update")
    for group in groups:
        _emit_group(graph, group)
    return graph.to_model(doc_string=doc_string)


def _emit_group(graph: Graph, group: GroupSpec) -> None:
    params, grads, state, masks = [], [], [], []
    for spec in group.params:
        params.append(graph.input(spec.name, spec.dtype, spec.shape))
        grads.append(graph.input(names.grad(spec.name), spec.dtype, spec.shape))
        state.append(state_inputs(graph, group.transform, spec))
        masks.append(graph.input(names.has_grad(spec.name), np.bool_, ()) if group.masked else None)
    grads = [_kept(mask, g, 0.0) for mask, g in zip(masks, grads)]
    ctx = Context(graph, group.name, [p.name for p in group.params], params, state, masks=masks)
    updates = group.transform.apply(grads, ctx)
    steps = ctx.steps_used
    for i, (spec, mask) in enumerate(zip(group.params, masks)):
        graph.output(names.new(spec.name), _kept(mask, ctx.params[i] + updates[i], params[i]))
        for slot in state[i]:
            graph.output(names.new(names.state(spec.name, slot)), _kept(mask, ctx.state_out[i][slot], state[i][slot]))
        if i in steps:
            graph.output(names.new(names.step(spec.name)), _kept(mask, steps[i], ctx.previous_step(i)))


def state_inputs(graph: Graph, transform: Transform, spec: ParamSpec) -> dict[str, Sym]:
    """The state inputs ``<param>.<slot>`` of one tensor: every slot of ``transform``, of each kind."""
    state = {slot: graph.input(names.state(spec.name, slot), spec.dtype, spec.shape) for slot in transform.all_slots()}
    for slot in transform.scalar_slots():
        state[slot] = graph.input(names.state(spec.name, slot), np.float64, (), weak=True)
    for slot, shape in transform.shaped_slots(spec.shape).items():
        state[slot] = graph.input(names.state(spec.name, slot), spec.dtype, shape)
    return state


def _kept(mask: Sym | None, new: Sym, old: Sym | float) -> Sym:
    """``new`` where the tensor has a gradient this step, else ``old`` (``new`` if unmasked)."""
    return new if mask is None else where(mask, new, old)
