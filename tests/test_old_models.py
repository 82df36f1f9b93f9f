"""Old ONNX files train: IR 3, opset 9, weights built by ConstantOfShape nodes.

The nine models that ship inside the onnx package (``onnx/backend/test/data/light``:
AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19,
ZFNet-512) each train for two SGD steps; then each piece of the preparation is checked
on a tiny hand-built IR-3 / opset-9 model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim, preparation

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(LIGHT.glob("*.onnx"))


def test_the_light_models_are_there():
    assert len(MODELS) == 9, f"expected the 9 light models of onnx's backend tests in {LIGHT}"


def with_logits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str, int]:
    """``model`` with the input of the Softmax that makes its output (the logits) as an output
    too, that name and its rank. DenseNet-121 ends without a Softmax: its output is the logits."""
    output = model.graph.output[0].name
    softmax = [n for n in model.graph.node if n.op_type == "Softmax" and n.output[0] == output]
    logits = softmax[0].input[0] if softmax else output
    if softmax:
        model.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    inferred = preparation.infer_shapes(preparation.normalized(model)).graph.output
    rank = next(len(o.type.tensor_type.shape.dim) for o in inferred if o.name == logits)
    return model, logits, rank


def fresh_weights(parameters: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """He-normal weights (std sqrt(2 / fan_in)) and ones for vectors (biases, scales): the files'
    own weights are all 0.02, which makes every unit alike and VGG-19's logits about 1e32. Drawn in the
    weights' own float32 (VGG-19 has 143M: float64 draws took seconds)."""
    def he_normal(v):
        weights = rng.standard_normal(v.shape, dtype=v.dtype)
        weights *= v.dtype.type(np.sqrt(2 / np.prod(v.shape[1:])))
        return weights

    return {name: he_normal(v) if v.ndim > 1 else np.ones_like(v) for name, v in parameters.items()}


def data_input(model: onnx.ModelProto) -> str:
    """The one graph input that is not an initializer (IR 3 lists initializers as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_light_model_trains(path):
    """Cross-entropy attached to the logits before the Softmax; one 1x3x224x224 image, a random
    class. Two steps: the second step's loss, on the same batch after one update, is lower.
    ``pytest --durations=0`` gives each model's seconds (VGG-19: about half the file's)."""
    ort.set_seed(0)  # Dropout's masks
    rng = np.random.default_rng(0)
    model, logits, rank = with_logits(onnx.load(str(path)))
    graph = model.graph
    ranks = {t.name: t.dims[0] for t in graph.initializer if t.data_type == TensorProto.INT64 and len(t.dims) == 1}
    filled = {n.output[0]: ranks[n.input[0]] for n in graph.node if n.op_type == "ConstantOfShape"}
    statistics = {name for n in graph.node if n.op_type == "BatchNormalization" for name in n.input[3:5]}
    weights = {name for name, rank in filled.items() if rank > 1}  # of Conv and Gemm
    trainer = graphopt.Trainer(model, losses.cross_entropy(logits), optim.SGD(lr=0.01))
    assert set(filled) - statistics <= set(trainer.parameters)  # promoted, then trained
    assert set(trainer.buffers) == statistics
    state = trainer.state_dict()
    state["parameters"] = fresh_weights(state["parameters"], rng)
    trainer.load_state_dict(state)
    before = {name: p.data.copy() for name, p in trainer.parameters.items()}
    buffers = {name: value.copy() for name, value in trainer.buffers.items()}
    batch = {data_input(model): rng.random((1, 3, 224, 224), np.float32)}
    labels = rng.integers(0, 1000, (1,) * (rank - 1))
    first = trainer.step(batch, labels=labels)
    second = trainer.step(batch, labels=labels)
    assert np.isfinite(first) and np.isfinite(second)
    assert second < first
    for name, p in trainer.parameters.items():
        assert np.isfinite(p.data).all(), name
    changed = [name for name in weights if not np.array_equal(trainer.parameters[name].data, before[name])]
    assert sorted(changed) == sorted(weights)
    for name, value in trainer.buffers.items():
        assert np.isfinite(value).all() and not np.array_equal(value, buffers[name]), name



def test_promote_constants_on_a_light_model():
    """``promote_constants=True`` on an IR-3 file (it failed on the initializers listed as inputs)."""
    model, logits, _ = with_logits(onnx.load(str(LIGHT / "light_squeezenet.onnx")))
    filled = {n.output[0] for n in model.graph.node if n.op_type == "ConstantOfShape"}
    trained = [set(graphopt.Trainer(model, losses.cross_entropy(logits), optim.SGD(lr=0.01),
                                    promote_constants=promote).parameters) for promote in (False, True, ["conv1_w_0"])]
    assert filled <= trained[0] == trained[1] == trained[2]


# -- each preparation piece, on a tiny IR-3 / opset-9 model ---------------------------------------

SCALE, BIAS, EPS, MOMENTUM, K = np.array([1.0, 2.0, 0.5], np.float32), np.array([0.1, -0.2, 0.3], np.float32), \
    1e-5, 0.9, 2.0


def tiny_model() -> onnx.ModelProto:
    """x [2,3,4,4] -> x + zeros(Shape(x)) -> BatchNormalization (mean: ConstantOfShape 0.5, var: Constant
    2) -> 1x1 Conv (W: ConstantOfShape 0.1) -> Dropout(ratio attribute 0.25) -> GlobalAveragePool ->
    Flatten -> times Constant K = logits -> Softmax = prob. IR 3: the initializers are inputs too."""
    const = helper.make_tensor
    initializers = [numpy_helper.from_array(SCALE, "scale"), numpy_helper.from_array(BIAS, "bias"),
                    numpy_helper.from_array(np.array([3], np.int64), "stat_shape"),
                    numpy_helper.from_array(np.array([4, 3, 1, 1], np.int64), "W_shape")]
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("ConstantOfShape", ["x_shape"], ["zeros"], value=const("", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Add", ["x", "zeros"], ["x2"]),
        helper.make_node("ConstantOfShape", ["stat_shape"], ["mean"], value=const("", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Constant", [], ["var"], value=numpy_helper.from_array(np.full(3, 2.0, np.float32))),
        helper.make_node("BatchNormalization", ["x2", "scale", "bias", "mean", "var"], ["h"], epsilon=EPS,
                         momentum=MOMENTUM),
        helper.make_node("ConstantOfShape", ["W_shape"], ["W"], value=const("", TensorProto.FLOAT, [1], [0.1])),
        helper.make_node("Conv", ["h", "W"], ["c"]),
        helper.make_node("Dropout", ["c"], ["d"], ratio=0.25),
        helper.make_node("GlobalAveragePool", ["d"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(K, np.float32))),
        helper.make_node("Mul", ["flat", "k"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4]),
              *(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers)]
    outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 4]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4])]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model)
    return model


def tiny_logits(x, scale, bias, mean, var, w, k):
    """The tiny model's logits in inference mode, from the operators' formulas, in float64."""
    h = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + EPS) * scale[:, None, None] + bias[:, None, None]
    return np.einsum("oc,nchw->no", w[:, :, 0, 0], h) / (x.shape[2] * x.shape[3]) * k


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_normalized_converts_opset_and_ir_and_lists_only_real_inputs():
    model = tiny_model()
    result = preparation.normalized(model)
    assert result.ir_version == graphopt.IR_VERSION
    assert [(o.domain, o.version) for o in result.opset_import] == [("", graphopt.OPSET)]
    assert [i.name for i in result.graph.input] == ["x"]
    assert {t.name for t in result.graph.initializer} == {"scale", "bias", "stat_shape", "W_shape"}
    dropout = next(n for n in result.graph.node if n.op_type == "Dropout")
    assert not dropout.attribute and len(dropout.input) == 2  # ratio: an input since opset 12
    onnx.checker.check_model(result, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    for old, new in zip(_run(model, {"x": x}), _run(result, {"x": x})):
        np.testing.assert_allclose(new, old, rtol=1e-6)
    assert preparation.normalized(result) is result  # nothing left to change
    model.graph.input.pop()  # W_shape: an initializer not listed as an input, which IR 3 forbids
    model.ir_version = 4
    assert [i.name for i in preparation.normalized(model).graph.input] == ["x", "scale", "bias", "stat_shape"]


def test_implicit_initializers_are_statistics_and_filled_weights():
    """Not the ConstantOfShape of a run-time shape, not the float Constant K."""
    model = preparation.normalized(tiny_model())
    assert preparation.implicit_initializers(model) == ["mean", "var", "W"]
    model.graph.node.extend([helper.make_node("Constant", [], ["two"], value_ints=[2]),
                             helper.make_node("ConstantOfShape", ["two"], ["filled"])])  # zeros, float
    assert preparation.implicit_initializers(model) == ["mean", "var", "W", "filled"]


def test_weights_as_initializers():
    model = preparation.normalized(tiny_model())
    promoted = preparation.weights_as_initializers(model)
    values = {t.name: numpy_helper.to_array(t) for t in promoted.graph.initializer}
    np.testing.assert_array_equal(values["mean"], np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(values["var"], np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(values["W"], np.full((4, 3, 1, 1), 0.1, np.float32))
    made = {o for n in promoted.graph.node for o in n.output}
    assert not made & {"mean", "var", "W"} and {"k", "zeros"} <= made
    for promote in (True, ["k"], "k"):
        values = {t.name: numpy_helper.to_array(t) for t in
                  preparation.weights_as_initializers(model, promote).graph.initializer}
        assert {"mean", "var", "W", "k"} <= set(values) and values["k"] == K
    with pytest.raises(ValueError, match="'zeros'"):
        preparation.weights_as_initializers(model, ["zeros"])  # its shape is known only at run time


def test_trainer_on_the_tiny_model_keeps_its_function():
    """Inference mode: the loss is the published formula of the opset-9 model's operators, so the
    conversion and the promotion kept the function; the filled W is trained, the Constant K is not."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    labels = np.array([1, 3])
    trainer = graphopt.Trainer(tiny_model(), losses.cross_entropy("logits"), optim.SGD(lr=0.1), training_mode=False)
    assert sorted(trainer.parameters) == ["W", "bias", "scale"]
    assert trainer.buffers == {}
    w = np.full((4, 3, 1, 1), 0.1)
    logits = tiny_logits(x.astype(np.float64), SCALE, BIAS, np.full(3, 0.5), np.full(3, 2.0), w, K)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert trainer.step({"x": x}, labels=labels) == pytest.approx(-log_softmax[[0, 1], labels].mean(), rel=1e-5)
    assert not np.allclose(trainer.parameters["W"].data, 0.1)
    promoted = graphopt.Trainer(tiny_model(), losses.cross_entropy("logits"), optim.SGD(lr=0.1),
                                promote_constants=True, training_mode=False)
    assert sorted(promoted.parameters) == ["W", "bias", "scale"]  # k, a scalar, looks like an exporter's constant
    named = graphopt.Trainer(tiny_model(), losses.cross_entropy("logits"), optim.SGD(lr=0.1),
                             promote_constants=["k"], training_mode=False)
    assert sorted(named.parameters) == ["W", "bias", "k", "scale"]


def test_trainer_updates_statistics_built_by_constants():
    """Training mode: the running statistics (ConstantOfShape, Constant) move as
    ``momentum * running + (1 - momentum) * batch``, the batch variance unbiased as in torch
    (ONNX's BatchNormalization takes the biased one); Dropout trains."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    trainer = graphopt.Trainer(tiny_model(), losses.cross_entropy("logits"), optim.SGD(lr=0.1))
    assert sorted(trainer.buffers) == ["mean", "var"]
    assert np.isfinite(trainer.step({"x": x}, labels=np.array([0, 2])))
    np.testing.assert_allclose(trainer.buffers["mean"], MOMENTUM * 0.5 + (1 - MOMENTUM) * x.mean((0, 2, 3)), rtol=1e-5)
    unbiased = x.var((0, 2, 3), ddof=1)
    np.testing.assert_allclose(trainer.buffers["var"], MOMENTUM * 2.0 + (1 - MOMENTUM) * unbiased, rtol=1e-5)
    exported = trainer.export(kind="inference")
    assert exported.ir_version == graphopt.IR_VERSION and [i.name for i in exported.graph.input] == ["x"]
    p, b = {name: v.data.astype(np.float64) for name, v in trainer.parameters.items()}, trainer.buffers
    expected = tiny_logits(x.astype(np.float64), p["scale"], p["bias"], b["mean"], b["var"], p["W"], K)
    np.testing.assert_allclose(_run(exported, {"x": x})[1], expected, rtol=1e-5, atol=1e-6)
