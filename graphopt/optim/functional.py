"""Functional optimizers, as ``torch.optim`` has them: numpy arrays updated in place.

Each function compiles (once per structure, shapes and dtypes) the same update graph
the optimizer classes run, executes it, and writes the new parameters and state back
into the arrays it was given. The update formulas are documented on the classes.

The compiled graphs are shared by all callers; calls from several threads run one at a
time (a module lock), so they never interleave on the shared cache or its bindings.
Arrays shared between threads' calls are the callers' to coordinate, as in torch.

>>> params, grads = [np.ones(3, np.float32)], [np.full(3, 0.5, np.float32)]
>>> buffers = [None]
>>> sgd(params, grads, buffers, weight_decay=0, momentum=0.9, lr=0.1, dampening=0,
...     nesterov=False, maximize=False)
>>> buffers[0]        # created on the first call, as torch does
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from graphopt import names
from graphopt.parameter import check_grad
from graphopt.optim.execution import Executor
from graphopt.runtime import Executable, Runtime
from graphopt.symbolic.dtypes import FLOAT_DTYPES
from graphopt.transforms import (AddWeightDecay, DecoupledWeightDecay, Maximize, Momentum, ScaleByAdam,
                                 ScaleByLearningRate, ScaleByRms, Transform, chain)
from graphopt.update import GroupSpec, ParamSpec

_GROUP = names.group(0)
_executor: Executor | None = None
_lock = threading.Lock()  # one functional update at a time: the executor's cache and bindings are shared


def sgd(params: Sequence[np.ndarray], d_p_list: Sequence[np.ndarray],
        momentum_buffer_list: list[np.ndarray | None], *, weight_decay: float, momentum: float, lr: float,
        dampening: float, nesterov: bool, maximize: bool, foreach: bool | None = None,
        has_sparse_grad: bool = False) -> None:
    """`graphopt.optim.SGD`'s update; a None momentum buffer is created (as ``b <- g``)."""
    transform = chain(Maximize() if maximize else None, AddWeightDecay() if weight_decay else None,
                      Momentum(nesterov=nesterov) if momentum else None, ScaleByLearningRate())
    hypers = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    slots = {"momentum_buffer": momentum_buffer_list} if momentum else {}
    steps = [0 if buffer is None else 1 for buffer in momentum_buffer_list] if momentum else [0] * len(params)
    _update(transform, hypers, params, d_p_list, slots, steps)


def adam(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], exp_avgs: list[np.ndarray],
         exp_avg_sqs: list[np.ndarray], max_exp_avg_sqs: list[np.ndarray], state_steps: list[Any], *,
         amsgrad: bool, beta1: float, beta2: float, lr: float, weight_decay: float, eps: float,
         maximize: bool, foreach: bool | None = None) -> None:
    """`graphopt.optim.Adam`'s update; ``state_steps`` (ints or 0-d arrays) are incremented."""
    _adam(AddWeightDecay, **locals())


def adamw(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], exp_avgs: list[np.ndarray],
          exp_avg_sqs: list[np.ndarray], max_exp_avg_sqs: list[np.ndarray], state_steps: list[Any], *,
          amsgrad: bool, beta1: float, beta2: float, lr: float, weight_decay: float, eps: float,
          maximize: bool, foreach: bool | None = None) -> None:
    """`graphopt.optim.AdamW`'s update; ``state_steps`` (ints or 0-d arrays) are incremented."""
    _adam(DecoupledWeightDecay, **locals())


def rmsprop(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], square_avgs: list[np.ndarray],
            grad_avgs: list[np.ndarray], momentum_buffer_list: list[np.ndarray], state_steps: list[Any], *,
            lr: float, alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool,
            maximize: bool, foreach: bool | None = None) -> None:
    """`graphopt.optim.RMSprop`'s update; ``state_steps`` (ints or 0-d arrays) are incremented."""
    transform = chain(Maximize() if maximize else None, AddWeightDecay() if weight_decay else None,
                      ScaleByRms(centered=centered, momentum=bool(momentum)), ScaleByLearningRate())
    slots = {"square_avg": square_avgs}
    if centered:
        slots["grad_avg"] = grad_avgs
    if momentum:
        slots["momentum_buffer"] = momentum_buffer_list
    hypers = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    _update(transform, hypers, params, grads, slots, _read_steps(state_steps))
    _increment(state_steps)


def _adam(decay: type[Transform], params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
          amsgrad, beta1, beta2, lr, weight_decay, eps, maximize, foreach) -> None:
    transform = chain(Maximize() if maximize else None, decay() if weight_decay else None,
                      ScaleByAdam(amsgrad=amsgrad), ScaleByLearningRate())
    slots = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    if amsgrad:
        slots["max_exp_avg_sq"] = max_exp_avg_sqs
    hypers = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    _update(transform, hypers, params, grads, slots, _read_steps(state_steps))
    _increment(state_steps)


def _read_steps(state_steps: Sequence[Any]) -> list[int]:
    return [int(np.asarray(s)) for s in state_steps]


def _increment(state_steps: list[Any]) -> None:
    for i, s in enumerate(state_steps):
        if isinstance(s, np.ndarray):
            s += 1
        else:
            state_steps[i] = s + 1


def _update(transform: Transform, hypers: dict[str, float], params: Sequence[np.ndarray],
            grads: Sequence[np.ndarray], slots: dict[str, list[np.ndarray | None]], steps: Sequence[int]) -> None:
    """Run ``transform`` over the tensors and write parameters and slots back in place."""
    for label, values in (("grads", grads), *slots.items()):
        if len(values) != len(params):
            raise ValueError(f"{label}: expected {len(params)} entries (one per param), got {len(values)}")
    specs = []
    for i, (p, g) in enumerate(zip(params, grads)):
        if not isinstance(p, np.ndarray) or not p.flags.c_contiguous or p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params[{i}]: expected a C-contiguous float numpy array, got {_describe(p)}")
        check_grad(p, g, f"params[{i}]")
        specs.append(ParamSpec(f"p{i}", p.shape, p.dtype))
    spec = GroupSpec(_GROUP, transform, tuple(specs))
    feeds: dict[str, Any] = {names.hyper(_GROUP, k): np.array(float(v), np.float64) for k, v in hypers.items()}
    feeds.update({names.hyper(_GROUP, "lr_mult"): np.array(1.0), names.hyper(_GROUP, "decay_mult"): np.array(1.0)})
    outputs: dict[str, np.ndarray] = {}
    for i, (pspec, p, g) in enumerate(zip(specs, params, grads)):
        feeds[pspec.name], feeds[names.grad(pspec.name)] = p, g
        feeds[names.step(pspec.name)] = np.array(steps[i], np.float64)
        outputs[names.new(pspec.name)] = np.empty_like(p)
        outputs[names.new(names.step(pspec.name))] = np.empty((), np.float64)
        for slot, values in slots.items():
            feeds[names.state(pspec.name, slot)] = np.zeros_like(p) if values[i] is None else values[i]
            outputs[names.new(names.state(pspec.name, slot))] = np.empty_like(p)
    with _lock:
        _executable(spec).run(feeds, outputs)
    for i, (pspec, p) in enumerate(zip(specs, params)):
        np.copyto(p, outputs[names.new(pspec.name)])
        for slot, values in slots.items():
            new = outputs[names.new(names.state(pspec.name, slot))]
            if values[i] is None:
                values[i] = new
            else:
                np.copyto(values[i], new)


def _describe(x: Any) -> str:
    return f"{x.dtype} array" if isinstance(x, np.ndarray) else type(x).__name__


def _executable(spec: GroupSpec) -> Executable:
    """The compiled update for ``spec``, from the executor the functional forms share."""
    global _executor
    if _executor is None:
        _executor = Executor(Runtime())
    return _executor.per_tensor(spec)[0]
