"""The README's main example runs, learns and exports a runnable update model."""

from __future__ import annotations

import importlib.util
import pathlib

import onnx

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns_and_exports(tmp_path, capsys):
    path = tmp_path / "update.onnx"
    _load("quickstart").main(str(path))
    lines = capsys.readouterr().out.splitlines()
    losses = [float(line.split("loss")[1].split()[0]) for line in lines if line.startswith("step")]
    assert losses[-1] < 0.1 * losses[0]
    assert "in the first step, 0 since" in "\n".join(lines)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_digits_cnn_reaches_95_percent_and_its_exports_run(tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort

    import graphopt

    module = _load("digits_cnn")
    history = module.train(epochs=15, out=tmp_path)
    assert history["test_accuracy"][-1] >= 0.95
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    assert (tmp_path / "digits_training.png").stat().st_size > 10_000
    _, x_test, _, y_test = module.digits(0)
    session = ort.InferenceSession(str(tmp_path / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": x_test})
    assert np.mean(logits.argmax(1) == y_test) == history["test_accuracy"][-1]
    training = onnx.load(str(tmp_path / "digits_training.onnx"))
    onnx.checker.check_model(training)
    main = {t.name for t in training.graph.initializer}  # the combined graph must not define a name twice
    assert not main & {t.name for t in training.training_info[0].algorithm.initializer}
    resumed = graphopt.TrainingSession(training)
    np.testing.assert_allclose(resumed.evaluate({"x": x_test})["logits"], logits, rtol=1e-5, atol=1e-5)
    before = resumed.state["fc.w"].copy()
    assert np.isfinite(resumed.step({"x": x_test[:32], "labels": y_test[:32]}))
    assert not np.array_equal(resumed.state["fc.w"], before)
    assert "test accuracy" in capsys.readouterr().out
