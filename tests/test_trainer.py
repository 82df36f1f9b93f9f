"""Training-step models and the Trainer: one ONNX Runtime call equals backward + optimizer step."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import optim
from graphopt.runtime import Runtime


def regression_model(dtype=np.float64, seed=0) -> onnx.ModelProto:
    """``loss = mean((tanh(x @ W1 + b1) @ W2 - t) ** 2)``."""
    rng = np.random.default_rng(seed)
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(dtype), n)
             for n, s in (("W1", (3, 4)), ("b1", (4,)), ("W2", (4, 2)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"]),
             helper.make_node("Sub", ["y", "t"], ["d"]), helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "regression", [helper.make_tensor_value_info("x", elem, ["batch", 3]),
                                                    helper.make_tensor_value_info("t", elem, ["batch", 2])],
                              [helper.make_tensor_value_info("loss", elem, []),
                               helper.make_tensor_value_info("y", elem, ["batch", 2])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def numpy_gradients(params, x, t):
    """The gradients of the same loss, by hand from the chain rule."""
    h = np.tanh(x @ params["W1"] + params["b1"])
    d = h @ params["W2"] - t
    dy = 2 * d / d.size
    dh = dy @ params["W2"].T * (1 - h * h)
    return {"W1": x.T @ dh, "b1": dh.sum(0), "W2": h.T @ dy}, float(np.mean(d * d))


@pytest.mark.parametrize("fused", [None, False], ids=["fused-where-built", "one-graph"])
@pytest.mark.parametrize("kind, kwargs", [("Adam", dict(lr=0.01, weight_decay=0.1)),
                                          ("SGD", dict(lr=0.1, momentum=0.9)),
                                          ("RMSprop", dict(lr=0.01, centered=True))])
def test_trainer_step_equals_gradients_plus_optimizer_step(kind, kwargs, fused):
    model = regression_model()
    trainer = graphopt.Trainer(model, loss="loss",
                               optimizer=getattr(optim, kind)(**kwargs, runtime=Runtime(fused=fused)))
    params = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    mirror = {n: graphopt.Parameter(v, name=n) for n, v in params.items()}
    reference = getattr(optim, kind)(list(mirror.values()), **kwargs)  # the facade, fed hand-made gradients
    rng = np.random.default_rng(1)
    built = []
    for _ in range(5):
        x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
        grads, expected_loss = numpy_gradients({n: p.data for n, p in mirror.items()}, x, t)
        assert trainer.step({"x": x, "t": t}) == pytest.approx(expected_loss, rel=1e-10)
        built.append(trainer.optimizer.sessions_built)
        for name, p in mirror.items():
            p.grad = grads[name]
        reference.step()
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, mirror[name].data, rtol=1e-9, atol=1e-12)
    # one graph (forward, backward, update), or the gradients then the fused update: built once
    assert set(built) == {2 if trainer.fused_update else 1}


def test_training_reduces_the_loss_and_lr_changes_do_not_recompile():
    trainer = graphopt.Trainer(regression_model(np.float32), loss="loss", optimizer=optim.Adam(lr=0.05))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    t = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype(np.float32)
    losses = [trainer.step({"x": x, "t": t}) for _ in range(60)]
    built = trainer.optimizer.sessions_built
    trainer.optimizer.param_groups[0]["lr"] = 0.01
    losses += [trainer.step({"x": x, "t": t}) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.optimizer.sessions_built == built == (2 if trainer.fused_update else 1)
    predicted = trainer.evaluate({"x": x, "t": t})
    assert predicted["loss"] == pytest.approx(float(np.mean((predicted["y"] - t) ** 2)), rel=1e-5)


def test_exported_step_model_runs_in_plain_onnxruntime(tmp_path):
    trainer = graphopt.Trainer(regression_model(), loss="loss", optimizer=optim.SGD(lr=0.1))
    path = tmp_path / "step.onnx"
    trainer.export(path, kind="step")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, t = np.ones((2, 3)), np.zeros((2, 2))
    feeds = {"x": x, "t": t, "group0.lr": np.array(0.1), "group0.lr_mult": np.array(1.0)}
    feeds.update({name: p.data.copy() for name, p in trainer.parameters.items()})
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    before = {name: p.data.copy() for name, p in trainer.parameters.items()}
    loss = trainer.step({"x": x, "t": t})
    assert outputs["loss"] == pytest.approx(loss)
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(outputs[f"{name}.new"], p.data, rtol=1e-12)
        assert not np.allclose(before[name], p.data)
    inference = trainer.export(kind="inference")
    weights = {t.name: numpy_helper.to_array(t) for t in inference.graph.initializer}
    np.testing.assert_array_equal(weights["W2"], trainer.parameters["W2"].data)


def test_trainer_errors_are_named():
    with pytest.raises(ValueError, match="without parameters"):
        graphopt.Trainer(regression_model(), "loss", optim.Adam([graphopt.Parameter(np.zeros(2))]))
    with pytest.raises(ValueError, match=r"trainable: 'nope' matches none of the candidate float initializers"):
        graphopt.Trainer(regression_model(), "loss", optim.Adam(), trainable=["nope"])
    with pytest.raises(ValueError, match=r"loss 'nope' is not an output of the model \(outputs: \['loss', 'y'\]\)"):
        graphopt.Trainer(regression_model(), "nope", optim.Adam())
    trainer = graphopt.Trainer(regression_model(), "loss", optim.Adam(), trainable=["W2"])
    assert list(trainer.parameters) == ["W2"]
    with pytest.raises(ValueError, match=r"missing inputs \['t'\]"):
        trainer.step({"x": np.ones((2, 3))})
