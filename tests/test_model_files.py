"""Models with external data: read from the model file's folder (or an explicit ``base_dir``), never
from the working directory; locations that leave that folder are refused.

Each test leaves a decoy data file of the same name in the working directory, so reading from
there would give wrong values rather than a missing-file error."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import graphopt
from graphopt import losses, optim
from graphopt.autodiff import add_gradients, differentiable_initializers

rng = np.random.default_rng(5)  # each test gets its own: conftest.py reseeds it from the node id
DATA = "weights.bin"


def linear_model() -> onnx.ModelProto:
    """``y = x @ W + b`` and ``l = sum(y * y)``, in float64."""
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"]),
         helper.make_node("Mul", ["y", "y"], ["yy"]), helper.make_node("ReduceSum", ["yy"], ["l"], keepdims=0)],
        "linear", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2]),
         helper.make_tensor_value_info("l", TensorProto.DOUBLE, [])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def externalized(model: onnx.ModelProto, folder, location: str = DATA) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers, those of its TrainingInfoProtos included, keep their data
    in ``folder / location`` (written here: `onnx.save` would leave the TrainingInfo's inline)."""
    model = onnx.load_from_string(model.SerializeToString())
    tensors = [*model.graph.initializer, *(t for info in model.training_info for t in info.algorithm.initializer)]
    with open(os.path.join(folder, location), "wb") as file:
        for tensor in tensors:
            data = numpy_helper.to_array(tensor).tobytes()
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
            set_external_data(tensor, location, offset=file.tell(), length=len(data))
            file.write(data)
            tensor.ClearField("raw_data")
    return model


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """(the model's folder, the working directory elsewhere holding a decoy data file of garbage)."""
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    (elsewhere / DATA).write_bytes(np.full(4096, 7.0).tobytes())
    monkeypatch.chdir(elsewhere)
    return models, elsewhere


def _saved(model, folder, name="model.onnx"):
    path = folder / name
    onnx.save(externalized(model, folder), str(path))
    return path


def test_trainer_reads_external_data_from_the_model_folder(folders):
    models, _ = folders
    model = linear_model()
    w, b = (numpy_helper.to_array(t) for t in model.graph.initializer)
    path = _saved(model, models)
    x, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    expected_loss = np.mean((x @ w + b - t) ** 2)  # mse from its formula, with the true weights
    for trainer in [graphopt.Trainer(path, losses.mse("y"), optim.SGD(lr=0.1)),
                    graphopt.Trainer(onnx.load(str(path), load_external_data=False), losses.mse("y"),
                                     optim.SGD(lr=0.1), base_dir=models)]:
        np.testing.assert_array_equal(trainer.parameters["W"].data, w)
        np.testing.assert_array_equal(trainer.parameters["b"].data, b)
        assert trainer.step({"x": x}, labels=t) == pytest.approx(expected_loss, rel=1e-12)


def test_a_proto_with_unloaded_external_data_needs_a_base_dir(folders):
    models, _ = folders
    path = _saved(linear_model(), models)
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ValueError, match=r"Trainer: the model's tensors \['W', 'b'\].*base_dir"):
        graphopt.Trainer(proto, losses.mse("y"), optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match=r"add_gradients: the model's tensors \['W', 'b'\]"):
        add_gradients(proto, "l")
    with pytest.raises(ValueError, match=r"differentiable_initializers: the model's tensors \['W', 'b'\]"):
        differentiable_initializers(proto, "l")
    assert differentiable_initializers(proto, "l", base_dir=models) == ["W", "b"]
    with pytest.raises(ValueError, match="base_dir is for a ModelProto"):
        graphopt.Trainer(path, losses.mse("y"), optim.SGD(lr=0.1), base_dir=models)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL  # the caller's proto is untouched
    add_gradients(proto, "l", base_dir=models)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL


def test_add_gradients_reads_external_data_from_the_model_folder(folders):
    models, _ = folders
    model = linear_model()
    w, b = (numpy_helper.to_array(t) for t in model.graph.initializer)
    path = _saved(model, models)
    x = rng.standard_normal((4, 3))
    y = x @ w + b  # l = sum(y^2): dl/dW = x^T 2y, dl/db = sum over the batch of 2y
    for graded in [add_gradients(path, "l"),
                   add_gradients(onnx.load(str(path), load_external_data=False), "l", base_dir=models)]:
        session = ort.InferenceSession(graded.SerializeToString(), providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
        np.testing.assert_allclose(got["W.grad"], x.T @ (2 * y), rtol=1e-12)
        np.testing.assert_allclose(got["b.grad"], (2 * y).sum(0), rtol=1e-12)


def test_training_session_reads_training_info_external_data_from_the_model_folder(folders):
    """The exported step is the standard-operator one, so the Trainer runs standard operators too: then the
    two agree bit for bit (fused kernels round Adam's scalar factors differently, for some data)."""
    from graphopt.runtime import Runtime

    models, _ = folders
    trainer = graphopt.Trainer(linear_model(), losses.mse("y"), optim.Adam(lr=0.01, runtime=Runtime(fused=False)))
    data = [(rng.standard_normal((4, 3)), rng.standard_normal((4, 2))) for _ in range(4)]
    trainer.step({"x": data[0][0]}, labels=data[0][1])
    exported = trainer.export(kind="training_info")
    path = _saved(exported, models)
    saved = onnx.load(str(path), load_external_data=False)
    algorithm = saved.training_info[0].algorithm.initializer
    assert algorithm and all(t.data_location == TensorProto.EXTERNAL for t in algorithm)
    expected = {t.name: numpy_helper.to_array(t)
                for t in [*exported.graph.initializer, *exported.training_info[0].algorithm.initializer]}
    sessions = [graphopt.TrainingSession(path), graphopt.TrainingSession(str(path)),
                graphopt.TrainingSession(saved, base_dir=models)]
    for session in sessions:
        assert set(session.state) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(session.state[name], value, err_msg=name)
    for x, t in data[1:]:
        loss = trainer.step({"x": x}, labels=t)
        for session in sessions:
            assert session.step({"x": x, "labels": t}) == loss
    for session in sessions:
        np.testing.assert_array_equal(session.state["W"], trainer.parameters["W"].data)
    with pytest.raises(ValueError, match=r"TrainingSession: the model's tensors \[.*'W.exp_avg'.*base_dir"):
        graphopt.TrainingSession(saved)


def test_locations_outside_the_model_folder_are_refused(folders):
    models, elsewhere = folders
    inner = models / "inner"
    inner.mkdir()
    model = linear_model()
    onnx.save(externalized(model, models), str(inner / "escape.onnx"))  # data in models/, locations '../'
    escape = onnx.load(str(inner / "escape.onnx"), load_external_data=False)
    for tensor in escape.graph.initializer:
        next(e for e in tensor.external_data if e.key == "location").value = f"../{DATA}"
    onnx.save(escape, str(inner / "escape.onnx"))
    with pytest.raises(ValueError, match=r"Trainer: external data of tensor 'W'.*'\.\./weights\.bin'.*outside"):
        graphopt.Trainer(inner / "escape.onnx", losses.mse("y"), optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match=r"add_gradients: external data of tensor 'W'.*outside"):
        add_gradients(escape, "l", base_dir=inner)
    absolute = onnx.load(str(inner / "escape.onnx"), load_external_data=False)
    for tensor in absolute.graph.initializer:
        next(e for e in tensor.external_data if e.key == "location").value = str(elsewhere / DATA)
    with pytest.raises(ValueError, match=r"external data of tensor 'W'.*relative path"):
        add_gradients(absolute, "l", base_dir=models)


def test_training_info_locations_outside_the_model_folder_are_refused(folders):
    models, _ = folders
    trainer = graphopt.Trainer(linear_model(), losses.mse("y"), optim.SGD(lr=0.1, momentum=0.9))
    inner = models / "inner"
    inner.mkdir()
    exported = externalized(trainer.export(kind="training_info"), models)
    algorithm = exported.training_info[0].algorithm.initializer
    for tensor in algorithm:
        next(e for e in tensor.external_data if e.key == "location").value = f"../{DATA}"
    for tensor in exported.graph.initializer:
        next(e for e in tensor.external_data if e.key == "location").value = f"../{DATA}"
    onnx.save(exported, str(inner / "escape.onnx"))
    with pytest.raises(ValueError, match=r"TrainingSession: external data of tensor .*outside"):
        graphopt.TrainingSession(inner / "escape.onnx")
    for tensor in exported.graph.initializer:  # now the inference graph's data is in reach, the algorithm's is not
        next(e for e in tensor.external_data if e.key == "location").value = DATA
    with pytest.raises(ValueError, match=rf"TrainingSession: external data of tensor '{algorithm[0].name}'.*outside"):
        graphopt.TrainingSession(exported, base_dir=models)
