"""Clear errors instead of silent wrong results (issue 10, item 4) and loads that change nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim

rng = np.random.default_rng(0)


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


@pytest.mark.parametrize("labels", [[0, -100, 3, 1, -100], [2, 2, 2, 2, 2], [-100, 1, -100, -100, -100]])
def test_cross_entropy_ignores_minus_100_as_torch(labels):
    model = classifier(dtype=np.float64)
    w, b = (numpy_helper.to_array(t).copy() for t in model.graph.initializer)
    trainer = graphopt.Trainer(model, losses.cross_entropy("y"), optim.SGD(lr=0.5))
    x, t = rng.standard_normal((5, 3)), np.array(labels)
    loss, w_new, b_new = _torch_reference(w, b, x, t, 0.5)
    assert trainer.step({"x": x}, labels=t) == pytest.approx(loss, rel=1e-12)
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


def test_trainer_with_a_loss_that_depends_on_no_weight_raises():
    model = classifier()
    model.graph.output.append(helper.make_tensor_value_info("x_mean", TensorProto.FLOAT, []))
    model.graph.node.append(helper.make_node("ReduceMean", ["x"], ["x_mean"], keepdims=0))
    with pytest.raises(ValueError, match=r"nothing to train in model \(graph 'classifier'\).*loss 'x_mean'.*\[\].*"
                                         r"float initializers: \['W', 'b'\]"):
        graphopt.Trainer(model, "x_mean", optim.SGD(lr=0.1))


def test_trainer_with_every_weight_frozen_raises(tmp_path):
    path = tmp_path / "classifier.onnx"
    onnx.save(classifier(), path)
    with pytest.raises(ValueError, match=rf"nothing to train in model '{path}'.*frozen=\['W', 'b\*'\]"):
        graphopt.Trainer(path, losses.cross_entropy("y"), optim.SGD(lr=0.1), frozen=["W", "b*"])
