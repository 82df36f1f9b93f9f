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
