"""A step that fails while planning a later group changes nothing in an earlier one: parameters,
state buffers, step counts and the set of slots stay bitwise as they were; the next valid step
then matches an optimizer that never failed, and the float64 reference. The same for a Trainer
step refused before it runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, names, optim
from graphopt.runtime.parallel import RowParallel
from tests.reference import ReferenceOptimizer

SETTINGS = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)
SHAPES = [(3,), (2, 2), (5,)]  # group 0: the first two, group 1: the last


def _optimizer(init):
    params = [graphopt.Parameter(a.astype(np.float32)) for a in init]
    return params, optim.Adam([{"params": params[:2]}, {"params": params[2:]}], **SETTINGS)


def _raw(optimizer) -> list:
    """Every flat buffer's parameters, stored slots and step counts, copied as they are."""
    return [(flat.data.copy(), {k: np.array(v, copy=True) for k, v in flat.slots.items()}, list(flat.steps))
            for flats in optimizer._flats for flat in flats]


def _assert_same(now, before):
    assert len(now) == len(before)
    for (data, slots, steps), (data0, slots0, steps0) in zip(now, before):
        np.testing.assert_array_equal(data, data0)
        assert slots.keys() == slots0.keys()
        for name in slots:
            assert slots[name].tobytes() == slots0[name].tobytes(), name
        assert steps == steps0


def _fail_compiling_group1(optimizer, monkeypatch):
    """Compiling any graph of group 1 raises (its planning is made to need one: amsgrad on)."""
    original = optimizer._runtime.compile

    def compile(model, *args, **kwargs):
        if any(i.name.startswith(names.group(1) + ".") for i in model.graph.input):
            raise RuntimeError("simulated compile failure")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(optimizer._runtime, "compile", compile)
    optimizer.param_groups[1]["amsgrad"] = True


def _fail_binding_group1(optimizer, monkeypatch):
    """Binding group 1's chunked update to its buffers raises (a new structure needs new bindings)."""
    original = RowParallel.__init__

    def init(self, executable, buffers, scalars, *args, **kwargs):
        if any(name.startswith(names.group(1) + ".") for name in scalars):
            raise RuntimeError("simulated binding failure")
        original(self, executable, buffers, scalars, *args, **kwargs)

    monkeypatch.setattr(RowParallel, "__init__", init)
    optimizer.param_groups[1]["amsgrad"] = True


def _bad_gradient_in_group1(optimizer, monkeypatch):
    """Group 1's gradient, set behind the setter, has the wrong shape: found when its gradients are read."""
    optimizer.param_groups[1]["params"][0]._grad = np.ones(4, np.float32)


FAILURES = {"compile": _fail_compiling_group1, "binding": _fail_binding_group1, "gradient": _bad_gradient_in_group1}


@pytest.mark.parametrize("amsgrad", [False, True], ids=["same-slots", "new-slot"])
@pytest.mark.parametrize("skip", [False, True], ids=["chunked", "per-tensor"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failure_planning_a_later_group_changes_nothing(failure, skip, amsgrad, monkeypatch):
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in SHAPES]
    params, optimizer = _optimizer(init)
    twin_params, twin = _optimizer(init)  # the same run, never failing
    reference = ReferenceOptimizer("Adam", [dict(SETTINGS, params=list(init[:2])),
                                            dict(SETTINGS, params=list(init[2:]))])
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(5)]

    def step(opt, ps, g, ref=None):
        for p, value in zip(ps, g):
            p.grad = value
        opt.step()
        if ref is not None:
            ref.step([[None if v is None else v.astype(np.float64) for v in g[:2]], [g[2].astype(np.float64)]])

    for g in grads[:3]:  # chunked steps: group 0 has moments
        step(optimizer, params, g)
        step(twin, twin_params, g, reference)

    # the failing step: group 0 changes its path or chain, group 1 fails while planned
    this = list(grads[3])
    if skip:
        this[1] = None  # group 0 then takes the per-tensor path, which reads true state values
    for group in (optimizer.param_groups[0], twin.param_groups[0], reference.groups[0]):
        group["amsgrad"] = amsgrad  # on: group 0's chain gains a slot
    before = _raw(optimizer)
    for p, value in zip(params, this):
        p.grad = value
    with monkeypatch.context() as patch:
        FAILURES[failure](optimizer, patch)
        with pytest.raises((RuntimeError, ValueError), match="simulated|params\\[0\\] of param group 1"):
            optimizer.step()
    _assert_same(_raw(optimizer), before)

    # then the same step, valid, and one more: as if nothing had failed
    optimizer.param_groups[1]["amsgrad"] = False
    step(optimizer, params, this)
    step(twin, twin_params, this, reference)
    step(optimizer, params, grads[4])
    step(twin, twin_params, grads[4], reference)
    for p, q, expected in zip(params, twin_params, [*reference.groups[0]["params"], *reference.groups[1]["params"]]):
        np.testing.assert_array_equal(p.data, q.data)
        np.testing.assert_allclose(p.data, expected, rtol=2e-5, atol=2e-6)
    _assert_same(_raw(optimizer), _raw(twin))


def test_a_trainer_step_refused_for_a_missing_input_changes_nothing():
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    trainer, twin = (graphopt.Trainer(model, losses.mse("y"), optim.Adam(lr=0.05)) for _ in range(2))
    batches = [(rng.standard_normal((4, 3)), rng.standard_normal((4, 2))) for _ in range(3)]
    for t in (trainer, twin):  # accumulate, then the optimizer's own step: the moments exist
        t.accumulate({"x": batches[0][0]}, labels=batches[0][1])
        t.step({"x": batches[1][0]}, labels=batches[1][1])
    before = _raw(trainer.optimizer)
    with pytest.raises(ValueError, match=r"Trainer.step: missing inputs \['x'\]"):
        trainer.step({}, labels=batches[2][1])
    _assert_same(_raw(trainer.optimizer), before)
    x, t = batches[2]
    assert trainer.step({"x": x}, labels=t) == twin.step({"x": x}, labels=t)
    _assert_same(_raw(trainer.optimizer), _raw(twin.optimizer))
