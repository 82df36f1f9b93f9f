"""Clear errors instead of silent wrong results (issue 10, item 4) and loads that change nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim

rng = np.random.default_rng(0)  # each test gets its own: conftest.py reseeds it from the node id


def classifier(classes: int | str = 4, dtype=np.float32) -> onnx.ModelProto:
    """``y = x @ W + b`` with ``classes`` outputs (a name: a dimension the static shapes leave open)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    n = 4
    w, b = rng.standard_normal((3, n)).astype(dtype), (rng.standard_normal(n) * 0.1).astype(dtype)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", elem, ["batch", 3])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    if isinstance(classes, str):  # y reshaped to a shape fed at run time: C is unknown statically
        nodes[1] = helper.make_node("Add", ["xw", "b"], ["y0"])
        nodes.append(helper.make_node("Reshape", ["y0", "shape"], ["y"]))
        inputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    outputs = [helper.make_tensor_value_info("y", elem, ["batch", classes])]
    graph = helper.make_graph(nodes, "classifier", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


# -- cross-entropy labels ------------------------------------------------------------------


def _weights(trainer):
    return {n: p.data.copy() for n, p in trainer.parameters.items()}


@pytest.mark.parametrize("method", ["step", "accumulate"])
@pytest.mark.parametrize("bad", [-1, 4, 7, -101])
def test_cross_entropy_label_out_of_range_raises_before_anything_runs(method, bad):
    trainer = graphopt.Trainer(classifier(), losses.cross_entropy("y"), optim.SGD(lr=0.5, momentum=0.9))
    x, t = rng.standard_normal((5, 3)).astype(np.float32), np.array([0, 1, 2, 3, bad])
    before = _weights(trainer)
    with pytest.raises(ValueError, match=rf"Trainer.{method}: label input 'labels' holds {bad}, outside \[0, 4\) "
                                         r"for the 4 classes"):
        getattr(trainer, method)({"x": x}, labels=t)
    for name, value in before.items():
        np.testing.assert_array_equal(trainer.parameters[name].data, value)
    assert all(p.grad is None for p in trainer.parameters.values())
    assert trainer.optimizer.state == {}


def test_cross_entropy_label_check_with_classes_known_only_at_run_time():
    trainer = graphopt.Trainer(classifier("C"), losses.cross_entropy("y"), optim.SGD(lr=0.5))
    assert trainer._classes is None  # noqa: SLF001 - the case under test: no static class count
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32), "shape": np.array([-1, 4])}
    with pytest.raises(ValueError, match=r"label input 'labels' holds 4, outside \[0, 4\)"):
        trainer.step(feeds, labels=np.array([0, 4]))
    with pytest.raises(ValueError, match=r"holds -1, outside \[0, 4\)"):
        trainer.step(feeds, labels=np.array([-1, 0]))
    trainer.step(feeds, labels=np.array([3, -100]))


def _torch_reference(w, b, x, t, lr):
    torch = pytest.importorskip("torch")
    weight, bias = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(torch.tensor(x) @ weight + bias, torch.tensor(t))
    loss.backward()
    return float(loss.detach()), w - lr * weight.grad.numpy(), b - lr * bias.grad.numpy()


@pytest.mark.parametrize("labels", [[0, -100, 3, 1, -100], [2, 2, 2, 2, 2], [-100, 1, -100, -100, -100],
                                    [-100] * 5])  # all ignored: a NaN loss and a zero gradient, as torch
def test_cross_entropy_ignores_minus_100_as_torch(labels):
    model = classifier(dtype=np.float64)
    w, b = (numpy_helper.to_array(t).copy() for t in model.graph.initializer)
    trainer = graphopt.Trainer(model, losses.cross_entropy("y"), optim.SGD(lr=0.5))
    x, t = rng.standard_normal((5, 3)), np.array(labels)
    loss, w_new, b_new = _torch_reference(w, b, x, t, 0.5)
    assert trainer.step({"x": x}, labels=t) == pytest.approx(loss, rel=1e-12, nan_ok=True)
    np.testing.assert_allclose(trainer.parameters["W"].data, w_new, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(trainer.parameters["b"].data, b_new, rtol=1e-10, atol=1e-14)


def test_cross_entropy_other_ignore_index_as_torch():
    torch = pytest.importorskip("torch")
    model = classifier(dtype=np.float64)
    trainer = graphopt.Trainer(model, losses.cross_entropy("y", ignore_index=1), optim.SGD(lr=0.5))
    x, t = rng.standard_normal((4, 3)), np.array([1, 0, 1, 3])
    w, b = (trainer.parameters[n].data.copy() for n in ("W", "b"))
    expected = torch.nn.functional.cross_entropy(torch.tensor(x @ w + b), torch.tensor(t), ignore_index=1)
    assert trainer.accumulate({"x": x}, labels=t) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match=r"holds -100, outside \[0, 4\).*ignore_index=1"):
        trainer.step({"x": x}, labels=np.array([-100, 0, 1, 2]))


# -- nothing to train --------------------------------------------------------------------------


def _with_a_loss_of_no_weight():
    """The classifier with a second scalar output, ``x_mean``, that no weight affects."""
    model = classifier()
    model.graph.output.append(helper.make_tensor_value_info("x_mean", TensorProto.FLOAT, []))
    model.graph.node.append(helper.make_node("ReduceMean", ["x"], ["x_mean"], keepdims=0))
    return model


def test_trainer_with_a_loss_that_depends_on_no_weight_raises():
    model = _with_a_loss_of_no_weight()
    with pytest.raises(ValueError, match=r"nothing to train in model \(graph 'classifier'\).*loss 'x_mean'.*\[\].*"
                                         r"float initializers: \['W', 'b'\]"):
        graphopt.Trainer(model, "x_mean", optim.SGD(lr=0.1))


def test_trainer_with_trainable_weights_the_loss_does_not_depend_on_raises():
    model = _with_a_loss_of_no_weight()
    with pytest.raises(ValueError, match=r"nothing to train in model .*trainable=\['W'\] \(selected \['W'\], none of "
                                         r"which the loss 'x_mean' depends on\)"):
        graphopt.Trainer(model, "x_mean", optim.SGD(lr=0.1), trainable=["W"])
    trainer = graphopt.Trainer(model, losses.cross_entropy("y"), optim.SGD(lr=0.1), trainable=["W"])
    assert list(trainer.parameters) == ["W"]  # a loss that depends on it: trained


def test_trainer_with_every_weight_frozen_raises(tmp_path):
    path = tmp_path / "classifier.onnx"
    onnx.save(classifier(), path)
    with pytest.raises(ValueError, match=rf"nothing to train in model '{path}'.*frozen=\['W', 'b\*'\]"):
        graphopt.Trainer(path, losses.cross_entropy("y"), optim.SGD(lr=0.1), frozen=["W", "b*"])


# -- optimizer load_state_dict ------------------------------------------------------------------


def _trained_optimizer(kind, **settings):
    params = [graphopt.Parameter(rng.standard_normal(3).astype(np.float32), name="a"),
              graphopt.Parameter(rng.standard_normal((2, 2)).astype(np.float32), name="b")]
    optimizer = getattr(optim, kind)(params, **settings)
    for _ in range(3):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        optimizer.step()
    return params, optimizer


def _optimizer_snapshot(params, optimizer):
    return [p.data.copy() for p in params], optimizer.state_dict()


def _assert_same_state(now, before):
    assert now["param_groups"] == before["param_groups"]
    assert now["state"].keys() == before["state"].keys()
    for i, slots in before["state"].items():
        assert now["state"][i].keys() == slots.keys()
        for key, value in slots.items():
            np.testing.assert_array_equal(now["state"][i][key], value)


def _assert_optimizer_unchanged(params, optimizer, snapshot):
    data, saved = snapshot
    for p, before in zip(params, data):
        np.testing.assert_array_equal(p.data, before)
    _assert_same_state(optimizer.state_dict(), saved)


def test_adamw_refuses_adams_state_dict_naming_both():
    params, adamw = _trained_optimizer("AdamW", lr=0.1, weight_decay=0.5)
    _, adam = _trained_optimizer("Adam", lr=0.1)
    snapshot = _optimizer_snapshot(params, adamw)
    with pytest.raises(ValueError, match=r"AdamW.load_state_dict: the state dict is from Adam, this optimizer is AdamW"
                                         r"; another optimizer's state cannot be loaded"):
        adamw.load_state_dict(adam.state_dict())
    _assert_optimizer_unchanged(params, adamw, snapshot)
    assert adamw.param_groups[0]["weight_decay"] == 0.5
    assert adamw.state_dict()["class"] == "AdamW"


def test_state_dict_without_class_is_accepted_when_the_settings_match():
    """Documented decision: a dict written before 'class' existed loads if its group keys are this
    optimizer's exactly (Adam's and AdamW's are the same keys: the class cannot be told apart)."""
    params, adam = _trained_optimizer("Adam", lr=0.1)
    saved = {k: v for k, v in adam.state_dict().items() if k != "class"}
    saved["param_groups"][0]["lr"] = 0.25
    adam.load_state_dict(saved)
    assert adam.param_groups[0]["lr"] == 0.25


def _poison(saved, kind):
    """Change the first parameter's state and the lr (valid), then break the last parameter's state."""
    saved["param_groups"][0]["lr"] = 0.5
    first, last = saved["state"][0], saved["state"][1]
    slot = next(k for k in first if k != "step")
    first[slot] = first[slot] + 1
    if kind == "negative step":
        last["step"] = -3
    elif kind == "fractional step":
        last["step"] = 2.5
    elif kind == "nan step":
        last["step"] = float("nan")
    elif kind.startswith("negative "):
        last[kind.split()[1]] = -np.abs(last[kind.split()[1]]) - 1
    elif kind.startswith("inf "):
        last[kind.split()[1]][0, 0] = np.inf
    elif kind.startswith("nan "):
        last[kind.split()[1]][1, 1] = np.nan
    elif kind == "wrong shape":
        last[slot] = np.zeros(4, np.float32)
    return saved


@pytest.mark.parametrize("kind, settings, poison, message", [
    ("Adam", {}, "negative step", r"'step' must be a whole number >= 0, got -3"),
    ("Adam", {}, "fractional step", r"'step' must be a whole number >= 0, got 2.5"),
    ("SGD", dict(momentum=0.9), "nan step", r"'step' must be a whole number >= 0, got nan"),
    ("Adam", {}, "negative exp_avg_sq", r"slot 'exp_avg_sq' is an average of squares and must be >= 0"),
    ("Adam", dict(amsgrad=True), "negative max_exp_avg_sq", r"slot 'max_exp_avg_sq' is an average of squares"),
    ("RMSprop", {}, "negative square_avg", r"slot 'square_avg' is an average of squares"),
    ("Adam", {}, "inf exp_avg", r"slot 'exp_avg' holds non-finite values \(inf\)"),
    ("SGD", dict(momentum=0.9), "nan momentum_buffer", r"slot 'momentum_buffer' holds non-finite values \(nan\)"),
    ("RMSprop", dict(centered=True), "inf grad_avg", r"slot 'grad_avg' holds non-finite values"),
    ("Adam", {}, "wrong shape", r"must be a float array of shape \(2, 2\)"),
])
def test_poisonous_state_is_refused_and_changes_nothing(kind, settings, poison, message):
    params, optimizer = _trained_optimizer(kind, lr=0.1, **settings)
    snapshot = _optimizer_snapshot(params, optimizer)
    with pytest.raises(ValueError, match=rf"{kind}.load_state_dict: state of parameter 'b'.*{message}"):
        optimizer.load_state_dict(_poison(optimizer.state_dict(), poison))
    _assert_optimizer_unchanged(params, optimizer, snapshot)
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_good_state_dict_still_loads():
    params, optimizer = _trained_optimizer("Adam", lr=0.1, amsgrad=True)
    saved = optimizer.state_dict()
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    optimizer.step()
    optimizer.load_state_dict(saved)
    _assert_same_state(optimizer.state_dict(), saved)


# -- Trainer.load_state_dict ---------------------------------------------------------------


def batch_norm_model() -> onnx.ModelProto:
    """``mean((BatchNorm(x @ W1) @ W2 - t) ** 2)``: parameters W1, gamma, beta, W2; buffers mean, var."""
    inits = {"W1": rng.standard_normal((3, 4)), "gamma": np.ones(4), "beta": np.zeros(4), "mean": np.zeros(4),
             "var": np.ones(4), "W2": rng.standard_normal((4, 2))}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]),
             helper.make_node("BatchNormalization", ["h0", "gamma", "beta", "mean", "var"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"]), helper.make_node("Sub", ["y", "t"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3]),
                                            helper.make_tensor_value_info("t", TensorProto.DOUBLE, ["batch", 2])],
                              [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])],
                              initializer=[numpy_helper.from_array(v.astype(np.float64), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _trained_trainer(steps):
    trainer = graphopt.Trainer(batch_norm_model(), "loss", optim.Adam(lr=0.01))
    for _ in range(steps):
        trainer.step({"x": rng.standard_normal((5, 3)), "t": rng.standard_normal((5, 2))})
    return trainer


def _break(saved, kind):
    if kind == "W2 shape":
        saved["parameters"]["W2"] = np.zeros((2, 4))
    elif kind == "W2 nan":
        saved["parameters"]["W2"][0, 0] = np.nan
    elif kind == "var shape":
        saved["buffers"]["var"] = np.ones(5)
    elif kind == "buffer missing":
        del saved["buffers"]["var"]
    elif kind == "negative exp_avg_sq":
        saved["optimizer"]["state"][3]["exp_avg_sq"][0] = -1.0
    elif kind == "negative step":
        saved["optimizer"]["state"][3]["step"] = -3
    elif kind == "another class":
        saved["optimizer"]["class"] = "AdamW"
    return saved


@pytest.mark.parametrize("kind, message", [
    ("W2 shape", r"parameter 'W2' has shape \(2, 4\), expected \(4, 2\)"),
    ("W2 nan", r"parameter 'W2' holds non-finite values"),
    ("var shape", r"buffer 'var' has shape \(5,\), expected \(4,\)"),
    ("buffer missing", r"buffers \['mean'\] do not match"),
    ("negative exp_avg_sq", r"Adam.load_state_dict: state of parameter 'W2'.*'exp_avg_sq'.*must be >= 0"),
    ("negative step", r"'step' must be a whole number >= 0, got -3"),
    ("another class", r"the state dict is from AdamW, this optimizer is Adam"),
])
def test_failing_trainer_load_changes_nothing(kind, message):
    trainer, other = _trained_trainer(2), _trained_trainer(4)
    assert list(trainer.parameters) == ["W1", "gamma", "beta", "W2"] and list(trainer.buffers) == ["mean", "var"]
    before = trainer.state_dict()
    saved = other.state_dict()
    saved["optimizer"]["param_groups"][0]["lr"] = 0.5
    with pytest.raises(ValueError, match=message):
        trainer.load_state_dict(_break(saved, kind))
    now = trainer.state_dict()
    for part in ("parameters", "buffers"):
        assert now[part].keys() == before[part].keys()
        for name, value in before[part].items():
            np.testing.assert_array_equal(now[part][name], value)
    _assert_same_state(now["optimizer"], before["optimizer"])
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01


def test_trainer_load_of_a_good_state_dict_restores_it():
    trainer, other = _trained_trainer(2), _trained_trainer(4)
    saved = other.state_dict()
    trainer.load_state_dict(saved)
    now = trainer.state_dict()
    for part in ("parameters", "buffers"):
        for name, value in saved[part].items():
            np.testing.assert_array_equal(now[part][name], value)
    _assert_same_state(now["optimizer"], saved["optimizer"])


# -- names that graphopt generates -------------------------------------------------------------


@pytest.mark.parametrize("first, second", [("a", "a.grad"), ("a.exp_avg", "a"), ("a", "a.new"), ("w", "w.step"),
                                           ("w", "w.my_custom_slot")])
def test_parameter_names_that_collide_with_generated_names_are_refused(first, second):
    params = [graphopt.Parameter(np.zeros(2, np.float32), name=first),
              graphopt.Parameter(np.zeros(2, np.float32), name=second)]
    longer, shorter = (second, first) if first in second else (first, second)
    with pytest.raises(ValueError, match=rf"Adam param group 0: the name '{longer}' could be one graphopt generates "
                                         rf"for '{shorter}'"):
        optim.Adam(params)
    # across groups too
    optimizer = optim.Adam([params[0]])
    with pytest.raises(ValueError, match=r"Adam param group 1: the name .* could be one graphopt generates"):
        optimizer.add_param_group({"params": [params[1]]})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("name", ["group0.lr", "group12", "group3.anything", "found_inf", "grad_scaler",
                                  "grad_scaler.scale"])
def test_generated_names_are_reserved(name):
    with pytest.raises(ValueError, match=rf"SGD param group 0: the name '{name}' is reserved for graphopt's own"):
        optim.SGD([graphopt.Parameter(np.zeros(2), name=name)], lr=0.1)


def test_unambiguous_names_with_dots_are_accepted():
    params = [graphopt.Parameter(np.zeros(2, np.float32), name=n) for n in ("fc.weight", "fc.bias", "grouping.w")]
    optimizer = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = np.ones(2, np.float32)
    optimizer.step()
    assert {i.name for i in optimizer.export().graph.input} >= {"fc.weight.grad", "fc.bias.exp_avg", "group0.lr"}


def test_trainer_refuses_an_initializer_named_after_a_generated_name():
    model = classifier()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.float32), "b.grad"))
    model.graph.node[1].input[1] = "b_sum"
    model.graph.node.insert(1, helper.make_node("Add", ["b", "b.grad"], ["b_sum"]))
    with pytest.raises(ValueError, match=r"Trainer \(model \(graph 'classifier'\)\): the name 'b.grad' could be one "
                                         r"graphopt generates for 'b'"):
        graphopt.Trainer(model, losses.cross_entropy("y"), optim.SGD(lr=0.1))


def test_trainer_refuses_an_input_named_after_a_parameters_generated_name():
    model = classifier()
    model.graph.input[0].name = "W.grad"
    model.graph.node[0].input[0] = "W.grad"
    with pytest.raises(ValueError, match=r"the name 'W.grad' could be one graphopt generates for 'W'"):
        graphopt.Trainer(model, losses.cross_entropy("y"), optim.SGD(lr=0.1))


# -- param_groups[i]["params"] changed after construction -------------------------------------------


def test_parameter_appended_to_a_group_is_refused_at_the_next_step():
    a, b = graphopt.Parameter(np.ones(2, np.float32), name="a"), graphopt.Parameter(np.ones(3, np.float32), name="b")
    optimizer = optim.SGD([a], lr=0.1)
    optimizer.param_groups[0]["params"].append(b)
    a.grad, b.grad = np.ones(2, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"SGD param group 0: 'params' changed after the group was added "
                                         r"\(1 parameters then, 2 now\); add parameters with add_param_group"):
        optimizer.step()
    np.testing.assert_array_equal(a.data, np.ones(2))
    for method in (optimizer.export, optimizer.state_dict):
        with pytest.raises(ValueError, match="'params' changed"):
            method()
    optimizer.param_groups[0]["params"].pop()
    optimizer.step()  # restored: steps again
    np.testing.assert_allclose(a.data, np.full(2, 0.9))


def test_parameters_reordered_or_replaced_in_a_group_are_refused():
    a, b = graphopt.Parameter(np.ones(2), name="a"), graphopt.Parameter(np.ones(3), name="b")
    optimizer = optim.SGD([a, b], lr=0.1)
    optimizer.param_groups[0]["params"].reverse()
    with pytest.raises(ValueError, match=r"'params' changed after the group was added \(2 parameters then, 2 now\)"):
        optimizer.step()
    optimizer.param_groups[0]["params"] = (a, b)
    with pytest.raises(ValueError, match=r"'params' changed"):
        optimizer.step()
