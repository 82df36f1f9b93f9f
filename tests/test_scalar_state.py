"""State that is not shaped like the parameter: per-tensor scalars (`Transform.scalar_slots`: NAdam's
``mu_product``, ASGD's ``eta`` and ``mu``) and slots of other shapes (`Transform.shaped_slots`:
Adafactor's ``row_var`` and ``col_var``) -- their declaration, graph I/O, validation on load, and
steps that fail or run in a Trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from onnx import numpy_helper

import graphopt
from graphopt import names, optim
from graphopt.transforms import Transform, chain
from graphopt.update import GroupSpec, ParamSpec, build_update
from tests.test_trainer import numpy_gradients, regression_model


@dataclass(frozen=True)
class _Scalar(Transform):
    name: str = "total"

    def scalar_slots(self):
        return {self.name: 1.0}


@dataclass(frozen=True)
class _Tensor(Transform):
    name: str = "total"

    def all_slots(self):
        return (self.name,)


def test_a_chain_refuses_a_slot_declared_twice_or_named_step():
    with pytest.raises(ValueError, match="'total' is declared by two"):
        chain(_Scalar(), _Tensor()).scalar_slots()
    with pytest.raises(ValueError, match="'total' is declared by two"):
        chain(_Scalar(), _Scalar()).scalar_slots()
    with pytest.raises(ValueError, match="'step'"):
        chain(_Scalar("step")).scalar_slots()
    assert dict(chain(_Scalar("a"), _Scalar("b")).scalar_slots()) == {"a": 1.0, "b": 1.0}


def test_update_models_take_scalar_and_shaped_slots_as_declared():
    params = (ParamSpec("w", (4, 3), np.dtype(np.float32)), ParamSpec("b", (3,), np.dtype(np.float32)))
    nadam = optim.NAdam()._transform(optim.NAdam().defaults)
    model = build_update([GroupSpec("group0", nadam, params)])
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    for p in ("w", "b"):
        for table in (inputs, outputs):
            name = names.state(p, "mu_product") + (".new" if table is outputs else "")
            assert table[name].elem_type == 11 and len(table[name].shape.dim) == 0, name
    adafactor = optim.Adafactor()._transform(optim.Adafactor().defaults)
    model = build_update([GroupSpec("group0", adafactor, params)])
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes["w.row_var"] == [4, 1] and shapes["w.col_var"] == [1, 3] and shapes["b.variance"] == [3]
    assert "w.variance" not in shapes and "b.row_var" not in shapes
    assert {"w.row_var.new", "w.col_var.new", "b.variance.new"} <= {o.name for o in model.graph.output}


def _stepped(kind, **kwargs):
    rng = np.random.default_rng(0)
    params = [graphopt.Parameter(rng.standard_normal(s)) for s in [(3, 2), (4,)]]
    opt = getattr(optim, kind)(params, **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = rng.standard_normal(p.shape)
        opt.step()
    return params, opt


def _snapshot(opt):
    saved = opt.state_dict()
    return {i: {k: np.array(v, copy=True) for k, v in entry.items()} for i, entry in saved["state"].items()}


BAD_STATE = [
    ("NAdam", "mu_product", 1.5, "must be in \\[0, 1\\]"),
    ("NAdam", "mu_product", -0.25, "must be in \\[0, 1\\]"),
    ("NAdam", "mu_product", math.nan, "finite number"),
    ("NAdam", "mu_product", "0.5", "finite number"),
    ("NAdam", "mu_product", np.ones(2), "finite number"),
    ("NAdam", "mu_product", True, "finite number"),
    ("ASGD", "eta", math.inf, "finite number"),
    ("ASGD", "eta", np.array(math.nan), "finite number"),
    ("ASGD", "mu", 2.0, "must be in \\[0, 1\\]"),
    ("Adafactor", "row_var", np.zeros((3, 2)), "shape \\(3, 1\\)"),
    ("Adafactor", "col_var", -np.ones((1, 2)), "average of squares"),
    ("Adafactor", "variance", np.ones((3, 1)), "shape \\(4,\\)"),
]


@pytest.mark.parametrize("kind, slot, value, match", BAD_STATE,
                         ids=[f"{k}-{s}-{i}" for i, (k, s, _, _) in enumerate(BAD_STATE)])
def test_bad_state_is_refused_naming_parameter_and_entry_and_changes_nothing(kind, slot, value, match):
    params, opt = _stepped(kind)
    index = 1 if slot == "variance" else 0
    before, data = _snapshot(opt), [p.data.copy() for p in params]
    saved = opt.state_dict()
    saved["state"][index][slot] = value
    with pytest.raises(ValueError, match=match) as error:
        opt.load_state_dict(saved)
    assert f"'p{index}' (params[{index}] of param group 0)" in str(error.value)
    assert f"'{slot}'" in str(error.value)
    after = _snapshot(opt)
    assert before.keys() == after.keys()
    for i in before:
        assert before[i].keys() == after[i].keys()
        for key in before[i]:
            np.testing.assert_array_equal(before[i][key], after[i][key])
    for p, d in zip(params, data):
        np.testing.assert_array_equal(p.data, d)


def test_scalar_state_is_shown_as_floats_and_loads_from_floats_or_0d_arrays():
    params, opt = _stepped("ASGD", t0=0)
    state = opt.state[params[0]]
    assert isinstance(state["eta"], float) and isinstance(state["mu"], float) and state["mu"] == 0.5
    saved = opt.state_dict()
    saved["state"][0]["eta"] = np.array(0.125)
    saved["state"][1]["mu"] = 0.25
    opt.load_state_dict(saved)
    assert opt.state[params[0]]["eta"] == 0.125 and opt.state[params[1]]["mu"] == 0.25


def test_a_parameter_without_saved_state_starts_from_the_initial_values():
    params, opt = _stepped("NAdam")
    saved = opt.state_dict()
    del saved["state"][1]
    opt.load_state_dict(saved)
    assert params[1] not in opt.state
    assert opt._flats[0][0].scalar_slots["mu_product"] == [opt.state[params[0]]["mu_product"], 1.0]


def test_a_step_that_fails_adds_no_scalar_or_shaped_slot_and_changes_nothing(monkeypatch):
    """Group 1 fails while compiling: group 0 (NAdam's mu_product, new this step) is untouched."""
    rng = np.random.default_rng(0)
    params = [graphopt.Parameter(rng.standard_normal(s)) for s in [(3, 2), (4,), (5,)]]
    opt = optim.NAdam([{"params": params[:2]}, {"params": params[2:]}])
    original = opt._runtime.compile

    def compile(model, *args, **kwargs):
        if any(i.name.startswith("group1.") for i in model.graph.input):
            raise RuntimeError("simulated compile failure")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(opt._runtime, "compile", compile)
    for p in params:
        p.grad = rng.standard_normal(p.shape)
    data = [p.data.copy() for p in params]
    with pytest.raises(RuntimeError, match="simulated"):
        opt.step()
    for flats in opt._flats:
        for flat in flats:
            assert flat.scalar_slots == {} and flat.slots == {} and flat.steps == [0] * len(flat.params)
    for p, d in zip(params, data):
        np.testing.assert_array_equal(p.data, d)


@pytest.mark.parametrize("kind, kwargs", [("NAdam", dict(lr=0.01, weight_decay=0.1)),
                                          ("ASGD", dict(lr=0.05, t0=1, lambd=0.05)),
                                          ("Adafactor", dict(lr=0.05, weight_decay=0.1))])
def test_a_trainer_steps_with_scalar_and_shaped_state_as_torch_does(kind, kwargs):
    """The training-step model carries the scalar and shaped slots; torch, fed the same (hand-derived)
    gradients, agrees on parameters and every state entry, through an lr change."""
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = regression_model()
        trainer = graphopt.Trainer(model, loss="loss", optimizer=getattr(optim, kind)(**kwargs))
        tensors = {t.name: torch.nn.Parameter(torch.from_numpy(numpy_helper.to_array(t).copy()))
                   for t in model.graph.initializer}
        ref = getattr(torch.optim, kind)(list(tensors.values()), foreach=False, **kwargs)
        rng = np.random.default_rng(1)
        for step in range(6):
            if step == 3:
                for opt in (trainer.optimizer, ref):
                    opt.param_groups[0]["lr"] *= 0.5
            x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
            grads, _ = numpy_gradients({n: q.detach().numpy() for n, q in tensors.items()}, x, t)
            for name, q in tensors.items():
                q.grad = torch.from_numpy(grads[name])
            trainer.step({"x": x, "t": t})
            ref.step()
            for name, p in trainer.parameters.items():
                q = tensors[name]
                np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-9, atol=1e-12)
                ours = trainer.optimizer.state[p]
                assert set(ours) == set(ref.state[q])
                for key, value in ref.state[q].items():
                    np.testing.assert_allclose(ours[key], value.numpy(), rtol=1e-9, atol=1e-12, err_msg=key)
    finally:
        torch.set_default_dtype(previous)
