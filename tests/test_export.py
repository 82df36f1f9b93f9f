"""Exported update models: valid ONNX, runnable by a bare onnxruntime session, equal to the facade."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt import optim

CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, clip_norm=0.5)),
    ("AdamW", dict(lr=0.01, scale=0.5, maximize=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.1)),
]


def _setup(kind, kwargs, dtype=np.float32):
    params = [graphopt.Parameter(np.linspace(-1, 1, 12).reshape(3, 4).astype(dtype), name="w"),
              graphopt.Parameter(np.zeros(4, dtype), name="b")]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr_mult": 2.0, "decay_mult": 0.0}]
    return params, getattr(optim, kind)(groups, **kwargs)


def _hypers(optimizer):
    """The hyperparameter feed a user would write by hand from param_groups."""
    feeds = {}
    for g, group in enumerate(optimizer.param_groups):
        for key, value in group.items():
            if key == "betas":
                feeds[f"group{g}.beta1"], feeds[f"group{g}.beta2"] = value
            elif key != "params" and not isinstance(value, bool):
                feeds[f"group{g}.{key}"] = value
    return {k: np.array(v, np.float64) for k, v in feeds.items()}


# The facade runs a fused form of the same update (graphopt.update.chunked): equal in exact arithmetic,
# so float64 agrees to 1e-10 and float32 to a few ulps accumulated over the steps.
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 1e-6)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("kind, kwargs", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_exported_model_runs_in_bare_onnxruntime_and_matches_facade(kind, kwargs, dtype, rtol, atol, tmp_path):
    params, optimizer = _setup(kind, kwargs, dtype)
    path = tmp_path / "update.onnx"
    model = optimizer.export(str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert model.ir_version == graphopt.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", graphopt.OPSET)]
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    # The model's state, as a user outside graphopt keeps it: zeros and step 0.
    values = {p.name: p.data.copy() for p in params}
    state = {name: np.zeros_like(values[name.split(".")[0]]) for name in inputs
             if name.count(".") == 1 and not name.endswith((".grad", ".step")) and not name.startswith("group")}
    steps = {name: np.array(0.0) for name in inputs if name.endswith(".step")}
    hypers = {k: v for k, v in _hypers(optimizer).items() if k in inputs}
    rng = np.random.default_rng(0)
    for _ in range(5):
        grads = {p.name: rng.standard_normal(p.shape).astype(dtype) for p in params}
        feeds = {**values, **state, **steps, **hypers, **{f"{k}.grad": v for k, v in grads.items()}}
        assert set(feeds) == inputs
        result = dict(zip(outputs, session.run(None, feeds)))
        values = {k: result[f"{k}.new"] for k in values}
        state = {k: result[f"{k}.new"] for k in state}
        steps = {k: result[f"{k}.new"] for k in steps}
        for p in params:
            p.grad = grads[p.name]
        optimizer.step()
    for p in params:
        np.testing.assert_allclose(values[p.name], p.data, rtol=rtol, atol=atol)
    for name, value in state.items():
        param_name, slot = name.split(".")
        facade = optimizer.state[next(p for p in params if p.name == param_name)][slot]
        np.testing.assert_allclose(value, facade, rtol=rtol, atol=atol)


def test_export_documents_every_input_and_output_name():
    _, optimizer = _setup("Adam", dict(amsgrad=True))
    model = optimizer.export()
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    per_param = ["", ".grad", ".exp_avg", ".exp_avg_sq", ".max_exp_avg_sq", ".step"]
    expected_inputs = {p + s for p in ("w", "b") for s in per_param}
    expected_inputs |= {f"group{g}.{h}" for g in (0, 1) for h in ("lr", "lr_mult", "beta1", "beta2", "eps")}
    assert inputs == expected_inputs
    assert outputs == {name + ".new" for name in expected_inputs
                       if not name.startswith("group") and not name.endswith(".grad")}
    hyper = next(i for i in model.graph.input if i.name == "group0.lr")
    assert hyper.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert len(hyper.type.tensor_type.shape.dim) == 0


def test_export_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, optimizer = _setup("SGD", dict(lr=0.1))
    assert isinstance(optimizer.export(), onnx.ModelProto)
    assert list(tmp_path.iterdir()) == []
