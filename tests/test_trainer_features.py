"""Trainer: built-in losses, trainable selection, param groups, gradient accumulation,
BatchNormalization running statistics, constant promotion and the training_info export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim

rng = np.random.default_rng(11)  # each test gets its own: conftest.py reseeds it from the node id


def linear_model(n_in=3, n_out=4, zero=False) -> onnx.ModelProto:
    """``y = x @ W + b`` in float64."""
    w = np.zeros((n_in, n_out)) if zero else rng.standard_normal((n_in, n_out)) * 0.5
    b = np.zeros(n_out) if zero else rng.standard_normal(n_out) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", n_out])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _softmax(y):
    e = np.exp(y - y.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sigmoid(y):
    return 1 / (1 + np.exp(-y))


# loss(y, t) and dloss/dy, from the published formulas
LOSSES = {
    "mse": (lambda y, t: np.mean((y - t) ** 2), lambda y, t: 2 * (y - t) / y.size),
    "l1": (lambda y, t: np.mean(np.abs(y - t)), lambda y, t: np.sign(y - t) / y.size),
    "bce_with_logits": (lambda y, t: np.mean(-t * np.log(_sigmoid(y)) - (1 - t) * np.log(_sigmoid(-y))),
                        lambda y, t: (_sigmoid(y) - t) / y.size),
    "cross_entropy": (lambda y, t: -np.mean(np.log(_softmax(y)[np.arange(len(t)), t])),
                      lambda y, t: (_softmax(y) - np.eye(y.shape[1])[t]) / len(t)),
}


@pytest.mark.parametrize("zero", [False, True], ids=["random", "zero-weights"])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_built_in_losses_match_their_formulas(kind, zero):
    model = linear_model(zero=zero)
    w, b = (numpy_helper.to_array(t).copy() for t in model.graph.initializer)
    trainer = graphopt.Trainer(model, loss=getattr(losses, kind)(), optimizer=optim.SGD(lr=0.5))
    x = rng.standard_normal((6, 3))
    t = rng.integers(0, 4, 6) if kind == "cross_entropy" else \
        (rng.random((6, 4)) if kind == "bce_with_logits" else rng.standard_normal((6, 4)))
    value, grad = LOSSES[kind]
    y = x @ w + b
    assert trainer.step({"x": x}, labels=t) == pytest.approx(value(y, t), rel=1e-12)
    dy = grad(y, t)
    np.testing.assert_allclose(trainer.parameters["W"].data, w - 0.5 * x.T @ dy, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(trainer.parameters["b"].data, b - 0.5 * dy.sum(0), rtol=1e-10, atol=1e-14)


def two_layer_model() -> onnx.ModelProto:
    inits = {"W1": rng.standard_normal((3, 5)), "b1": rng.standard_normal(5) * 0.1,
             "W2": rng.standard_normal((5, 2)), "b2": rng.standard_normal(2) * 0.1}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y0"]),
             helper.make_node("Add", ["y0", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def mlp_gradients(p, x, t):
    """d mean((y - t)^2) for the two-layer model, by the chain rule."""
    h = np.tanh(x @ p["W1"] + p["b1"])
    dy = 2 * (h @ p["W2"] + p["b2"] - t) / t.size
    dh = dy @ p["W2"].T * (1 - h * h)
    return {"W1": x.T @ dh, "b1": dh.sum(0), "W2": h.T @ dy, "b2": dy.sum(0)}


def test_trainable_and_frozen_patterns():
    model = two_layer_model()
    assert list(graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), trainable="W*").parameters) == ["W1", "W2"]
    assert list(graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), frozen=["b*", "W2"]).parameters) == ["W1"]
    with pytest.raises(ValueError, match="frozen: 'conv' matches none"):
        graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), frozen="conv")
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), frozen="W1")
    before = numpy_helper.to_array(model.graph.initializer[0])
    trainer.step({"x": rng.standard_normal((4, 3))}, labels=rng.standard_normal((4, 2)))
    assert "W1" not in trainer.parameters
    np.testing.assert_array_equal(numpy_helper.to_array(trainer.export(kind="inference").graph.initializer[0]),
                                  before)


@pytest.mark.parametrize("accumulate", [False, True])
def test_param_groups_and_accumulation_equal_the_facade(accumulate):
    """Groups with their own multipliers and, optionally, two accumulated batches per update,
    against the facade's optimizer fed the chain-rule gradients (summed over the batches)."""
    model = two_layer_model()
    groups = [{"params": "b*", "lr_mult": 0.5, "decay_mult": 0.0}]
    kwargs = {"lr": 0.05, "weight_decay": 0.1}
    trainer = graphopt.Trainer(model, losses.mse(), optim.AdamW(**kwargs), groups=groups)
    mirror = {t.name: graphopt.Parameter(numpy_helper.to_array(t).copy(), name=t.name)
              for t in model.graph.initializer}
    reference = optim.AdamW([{"params": [mirror["b1"], mirror["b2"]], "lr_mult": 0.5, "decay_mult": 0.0},
                             {"params": [mirror["W1"], mirror["W2"]]}], **kwargs)
    assert [len(g["params"]) for g in trainer.optimizer.param_groups] == [2, 2]
    for _ in range(4):
        batches = [(rng.standard_normal((5, 3)), rng.standard_normal((5, 2))) for _ in range(1 + accumulate)]
        total = {n: 0.0 for n in mirror}
        for x, t in batches:
            grads = mlp_gradients({n: p.data for n, p in mirror.items()}, x, t)
            total = {n: total[n] + grads[n] for n in mirror}
        if accumulate:
            trainer.accumulate({"x": batches[0][0]}, labels=batches[0][1])
        trainer.step({"x": batches[-1][0]}, labels=batches[-1][1])
        for n, p in mirror.items():
            p.grad = total[n]
        reference.step()
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, mirror[name].data, rtol=1e-10, atol=1e-13, err_msg=name)


def batch_norm_model(momentum=0.8, epsilon=1e-3) -> onnx.ModelProto:
    """``loss`` of ``Flatten(BatchNormalization(x)) @ W``, BN in inference mode as exported."""
    inits = [numpy_helper.from_array(v, k) for k, v in (
        ("scale", rng.random(3) + 0.5), ("bias", rng.standard_normal(3)), ("mean", rng.standard_normal(3)),
        ("var", rng.random(3) + 0.5), ("W", rng.standard_normal((12, 2))))]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"],
                              momentum=momentum, epsilon=epsilon),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_batch_normalization_trains_on_batch_statistics_and_updates_running_ones():
    model = batch_norm_model()
    init = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1))
    assert sorted(trainer.parameters) == ["W", "bias", "scale"] and sorted(trainer.buffers) == ["mean", "var"]
    m, eps = float(np.float32(0.8)), float(np.float32(1e-3))  # ONNX float attributes are float32
    x, t = rng.standard_normal((5, 3, 2, 2)) * 2 + 1, rng.standard_normal((5, 2))
    normalized = (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True) + eps)
    y = (normalized * init["scale"][:, None, None] + init["bias"][:, None, None]).reshape(5, -1) @ init["W"]
    assert trainer.step({"x": x}, labels=t) == pytest.approx(np.mean((y - t) ** 2), rel=1e-12)
    np.testing.assert_allclose(trainer.buffers["mean"], m * init["mean"] + (1 - m) * x.mean((0, 2, 3)), rtol=1e-12)
    # the running variance as torch updates it: with the unbiased batch variance (ONNX takes the biased one)
    np.testing.assert_allclose(trainer.buffers["var"], m * init["var"] + (1 - m) * x.var((0, 2, 3), ddof=1),
                               rtol=1e-12)
    # evaluation: inference mode, with the running statistics
    p = {n: v.data for n, v in trainer.parameters.items()}
    stats = trainer.buffers
    expected = ((x - stats["mean"][:, None, None]) / np.sqrt(stats["var"][:, None, None] + eps)
                * p["scale"][:, None, None] + p["bias"][:, None, None]).reshape(5, -1) @ p["W"]
    np.testing.assert_allclose(trainer.evaluate({"x": x})["y"], expected, rtol=1e-12)
    exported = {t.name: numpy_helper.to_array(t) for t in trainer.export(kind="inference").graph.initializer}
    np.testing.assert_array_equal(exported["mean"], stats["mean"])


def test_constants_can_be_promoted_to_trainable_weights():
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(rng.standard_normal((3, 2)))),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([2], np.int64))),
             helper.make_node("ConstantOfShape", ["shape"], ["b"], value=numpy_helper.from_array(np.zeros(1))),
             helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(ValueError, match="candidate float initializers"):
        graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), trainable="W")
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), promote_constants=True)
    assert sorted(trainer.parameters) == ["W", "b"]
    x, t = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    first = trainer.step({"x": x}, labels=t)
    assert all(trainer.step({"x": x}, labels=t) < first for _ in range(3))
    assert not np.allclose(trainer.parameters["b"].data, 0)


def test_training_info_export_continues_training_identically(tmp_path):
    """The exported step is the standard-operator one: bit for bit a Trainer on standard operators (with
    fused kernels, Adam's scalar factors round differently: equal to float64 rounding)."""
    from graphopt.runtime import Runtime

    model = batch_norm_model()
    trainer = graphopt.Trainer(model, losses.mse(), optim.Adam(lr=0.01, weight_decay=0.01,
                                                                runtime=Runtime(fused=False)))
    fused = graphopt.Trainer(model, losses.mse(), optim.Adam(lr=0.01, weight_decay=0.01))
    data = [(rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 2))) for _ in range(5)]
    for x, t in data[:2]:
        trainer.step({"x": x}, labels=t)
        fused.step({"x": x}, labels=t)
    path = tmp_path / "trained.onnx"
    trainer.export(path, kind="training_info")
    saved = onnx.load(str(path))
    onnx.checker.check_model(saved)
    bound = {e.key for e in saved.training_info[0].update_binding}
    assert {"W", "scale", "bias", "mean", "var", "W.exp_avg", "W.exp_avg_sq", "W.step"} <= bound
    session = graphopt.TrainingSession(str(path))
    for x, t in data[2:]:
        assert session.step({"x": x, "labels": t}) == trainer.step({"x": x}, labels=t)
        fused.step({"x": x}, labels=t)
    for name, p in trainer.parameters.items():
        np.testing.assert_array_equal(session.state[name], p.data)
        np.testing.assert_allclose(fused.parameters[name].data, p.data, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(session.state["var"], trainer.buffers["var"])
    x = data[0][0]
    np.testing.assert_array_equal(session.evaluate({"x": x})["y"], trainer.evaluate({"x": x})["y"])


def test_state_dict_round_trip_and_providers():
    model = batch_norm_model()
    data = [(rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 2))) for _ in range(4)]
    trainer = graphopt.Trainer(model, losses.mse(), optim.Adam(lr=0.01), providers=["CPUExecutionProvider"])
    for x, t in data[:2]:
        trainer.step({"x": x}, labels=t)
    saved = trainer.state_dict()
    expected = [trainer.step({"x": x}, labels=t) for x, t in data[2:]]
    restored = graphopt.Trainer(model, losses.mse(), optim.Adam(lr=0.01))
    with pytest.raises(ValueError, match="parameter 'W' has shape"):
        restored.load_state_dict({**saved, "parameters": {**saved["parameters"], "W": np.zeros(3)}})
    restored.load_state_dict(saved)
    assert [restored.step({"x": x}, labels=t) for x, t in data[2:]] == expected
    for name, p in restored.parameters.items():
        np.testing.assert_array_equal(p.data, trainer.parameters[name].data)
    np.testing.assert_array_equal(restored.buffers["mean"], trainer.buffers["mean"])


@pytest.mark.parametrize("runtime", ["device_buffers", "rows16x2"])
def test_trainer_on_other_runtimes_matches_the_default(runtime):
    """Device-resident state (the code path CUDA takes, here on the CPU) and a small chunk size."""
    from graphopt.runtime import Runtime

    make = {"device_buffers": lambda: Runtime(device_buffers=True),
            "rows16x2": lambda: Runtime(chunk_size=16, threads=2, fused=False)}[runtime]
    model = batch_norm_model()
    trainer = graphopt.Trainer(model, losses.mse(), optim.Adam(lr=0.01, runtime=make()))
    # standard operators both (device buffers never fuse): Adam's fused kernels round its scalar factors
    # otherwise, so a fused reference would equal these only to float64 rounding
    reference = graphopt.Trainer(model, losses.mse(), optim.Adam(lr=0.01, runtime=Runtime(fused=False)))
    for _ in range(3):
        x, t = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 2))
        assert trainer.step({"x": x}, labels=t) == reference.step({"x": x}, labels=t)
    for each in (trainer, reference):  # accumulating steps run the optimizer's own (fused) update
        each.accumulate({"x": x}, labels=t)
        each.step({"x": x}, labels=t)
    np.testing.assert_allclose(trainer.evaluate({"x": x})["y"], reference.evaluate({"x": x})["y"], rtol=1e-12)
    exported = trainer.export(kind="training_info").training_info[0].algorithm.initializer
    expected = reference.export(kind="training_info").training_info[0].algorithm.initializer
    assert [t.name for t in exported] == [t.name for t in expected]
    for ours, theirs in zip(exported, expected):
        np.testing.assert_allclose(numpy_helper.to_array(ours), numpy_helper.to_array(theirs), rtol=1e-12)


def test_bad_feeds_are_named_and_change_nothing():
    model = linear_model()
    trainer = graphopt.Trainer(model, losses.cross_entropy(), optim.SGD(lr=0.1))
    before = trainer.parameters["W"].data.copy()
    x = rng.standard_normal((5, 3))
    with pytest.raises(TypeError, match="input 'x' is float32, the model expects float64"):
        trainer.step({"x": x.astype(np.float32)}, labels=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="input 'labels' has shape \\(5, 1\\), the model expects 1 dimensions"):
        trainer.step({"x": x}, labels=np.zeros((5, 1), np.int64))
    with pytest.raises(ValueError, match="'z' is not an input of the model"):
        trainer.step({"x": x, "z": x}, labels=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"missing inputs \['labels'\]"):
        trainer.step({"x": x})
    np.testing.assert_array_equal(trainer.parameters["W"].data, before)
    trainer.step({"x": x}, labels=np.zeros(5, np.int32))  # integer labels of another width are converted
    assert not np.array_equal(trainer.parameters["W"].data, before)


def test_default_trainables_leave_out_non_differentiable_initializers():
    """A Clip bound, a Pow exponent and a Dropout ratio are float initializers the loss does not
    depend on differentiably: weight decay must not touch them."""
    consts = {"lo": np.array(-1.0), "two": np.array(2.0), "ratio": np.array(0.25, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Clip", ["h", "lo"], ["c"]),
             helper.make_node("Pow", ["c", "two"], ["p"]), helper.make_node("Dropout", ["p", "ratio"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])],
                              initializer=[numpy_helper.from_array(rng.standard_normal((3, 2)), "W")]
                              + [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    trainer = graphopt.Trainer(model, losses.mse(), optim.AdamW(lr=0.1, weight_decay=0.5))
    assert list(trainer.parameters) == ["W"]
    trainer.step({"x": rng.standard_normal((4, 3))}, labels=rng.standard_normal((4, 2)))
    weights = {t.name: numpy_helper.to_array(t) for t in trainer.export(kind="inference").graph.initializer}
    assert all(weights[k] == v for k, v in consts.items())
    explicit = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1), trainable=["W", "two"])
    assert list(explicit.parameters) == ["W", "two"]  # named explicitly: trained (the exponent is differentiable)


@pytest.mark.parametrize("opset", [13, 21])  # ReduceMean's axes: an attribute before opset 18, an input since
def test_running_variance_of_a_two_dimensional_batch_is_torchs_unbiased_one(opset):
    """BatchNorm1d's shape, [N, C]; momentum 0.9 as torch's exporter writes for torch's 0.1."""
    c = 4
    inits = [numpy_helper.from_array(v, k) for k, v in (
        ("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", rng.standard_normal(c)), ("var", rng.random(c) + 0.5),
        ("W", rng.standard_normal((c, 1))))]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"], momentum=0.9),
             helper.make_node("MatMul", ["n", "W"], ["y"])]
    graph = helper.make_graph(nodes, "bn1d", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", c])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1))
    m = float(np.float32(0.9))
    var = numpy_helper.to_array(inits[3]).copy()
    for batch in (6, 3):  # a different batch size: n comes from the batch at run time
        x = rng.standard_normal((batch, c)) * 3
        trainer.step({"x": x}, labels=rng.standard_normal((batch, 1)))
        var = m * var + (1 - m) * x.var(0, ddof=1)
        np.testing.assert_allclose(trainer.buffers["var"], var, rtol=1e-12)


@pytest.mark.parametrize("fused_step", ["graph", "two_calls"])
def test_a_step_leaves_the_running_statistics_arrays_it_read_alone(fused_step):
    """ONNX Runtime's BatchNormalization writes into the array it reads the running variance from: the trainer
    feeds copies, so the arrays it held before a step (a caller may hold them too) keep their values, in a step,
    and in `accumulate`."""
    data = np.random.default_rng(17)
    trainer = graphopt.Trainer(batch_norm_model(), losses.mse(), optim.SGD(lr=0.01), fused_step=fused_step)
    for run in (trainer.step, trainer.accumulate):
        held = dict(trainer.buffers)
        before = {name: value.copy() for name, value in held.items()}
        run({"x": data.standard_normal((4, 3, 2, 2)) + 1}, labels=data.standard_normal((4, 2)))
        for name, value in held.items():
            np.testing.assert_array_equal(value, before[name], err_msg=name)
            assert not np.array_equal(trainer.buffers[name], before[name]), name


def test_running_statistics_an_exporter_merged_with_the_weights_are_parted():
    """torch's eval-mode export with constant folding merges equal initializers: a fresh
    BatchNorm's running_var (ones) is ``Identity(scale)``, its running_mean ``Identity(bias)``."""
    c = 3
    inits = [numpy_helper.from_array(v, k) for k, v in (("scale", np.ones(c)), ("bias", np.zeros(c)),
                                                         ("W", rng.standard_normal((c, 1))))]
    nodes = [helper.make_node("Identity", ["scale"], ["var"]), helper.make_node("Identity", ["bias"], ["mean"]),
             helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"], momentum=0.9),
             helper.make_node("MatMul", ["n", "W"], ["y"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", c])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.5))
    assert sorted(trainer.parameters) == ["W", "bias", "scale"] and sorted(trainer.buffers) == ["mean", "var"]
    m, mean, var = float(np.float32(0.9)), np.zeros(c), np.ones(c)
    for _ in range(2):
        x = rng.standard_normal((5, c)) * 2 + 1
        trainer.step({"x": x}, labels=rng.standard_normal((5, 1)))
        mean, var = m * mean + (1 - m) * x.mean(0), m * var + (1 - m) * x.var(0, ddof=1)
        np.testing.assert_allclose(trainer.buffers["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(trainer.buffers["var"], var, rtol=1e-12)
    assert not np.allclose(trainer.parameters["scale"].data, np.ones(c))  # trained apart from the statistic
    exported = {t.name: numpy_helper.to_array(t) for t in trainer.export(kind="inference").graph.initializer}
    np.testing.assert_array_equal(exported["var"], trainer.buffers["var"])
    np.testing.assert_array_equal(exported["scale"], trainer.parameters["scale"].data)


def test_models_of_an_older_opset_train():
    model = batch_norm_model()
    model.opset_import[0].version = 13  # BatchNormalization-9 semantics, no training_mode attribute
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.01))  # small: a descent step on one batch
    data = np.random.default_rng(13)  # its own draws, whatever ran before
    x, t = data.standard_normal((4, 3, 2, 2)), data.standard_normal((4, 2))
    first = trainer.step({"x": x}, labels=t)
    assert trainer.step({"x": x}, labels=t) < first
    assert not np.allclose(trainer.buffers["mean"], numpy_helper.to_array(model.graph.initializer[2]))
    assert trainer.evaluate({"x": x})["y"].shape == (4, 2)


def test_batch_normalization_inside_a_model_local_function_trains_in_training_mode():
    model = batch_norm_model()
    bn = model.graph.node[0]
    block = helper.make_function("local", "Block", list(bn.input), ["n"], [bn],
                                 opset_imports=[helper.make_opsetid("", 21)])
    del model.graph.node[0]
    model.graph.node.insert(0, helper.make_node("Block", list(bn.input), ["n"], domain="local"))
    model.functions.append(block)
    model.opset_import.append(helper.make_opsetid("local", 1))
    trainer = graphopt.Trainer(model, losses.mse(), optim.SGD(lr=0.1))
    assert sorted(trainer.buffers) == ["mean", "var"]
    x = rng.standard_normal((4, 3, 2, 2)) + 3.0
    trainer.step({"x": x}, labels=rng.standard_normal((4, 2)))
    np.testing.assert_allclose(trainer.buffers["mean"],
                               float(np.float32(0.8)) * numpy_helper.to_array(model.graph.initializer[2])
                               + (1 - float(np.float32(0.8))) * x.mean((0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("threads", [None, 1, 3])
def test_the_runtimes_threads_bound_every_session_of_a_trainer(threads):
    """``Runtime(threads=k)`` caps the forward and backward sessions at k intra-op threads (several
    processes on one machine each take their share of the cores); without it ONNX Runtime chooses (0)."""
    from graphopt.runtime import Runtime

    trainer = graphopt.Trainer(linear_model(), losses.mse(), optim.SGD(lr=0.1, runtime=Runtime(threads=threads)))
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 4))
    trainer.step({"x": x}, labels=t)
    trainer.accumulate({"x": x}, labels=t)
    sessions = [trainer._gradients[1].session] + [e.session for _, e, _ in trainer._compiled.values()]  # noqa: SLF001
    assert {s.get_session_options().intra_op_num_threads for s in sessions} == {threads or 0}
