"""Whole-model gradient checks: an MLP and a small CNN against float64 central differences,
a transformer block against torch.autograd."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from tests.gradcheck import check_against_torch, check_gradients, node, r


def test_mlp():
    nodes = [node("Gemm", ["x", "W1", "b1"], ["h0"], transB=1), node("Relu", ["h0"], ["h1"]),
             node("MatMul", ["h1", "W2"], ["h2"]), node("Add", ["h2", "b2"], ["h3"]), node("Tanh", ["h3"], ["h4"]),
             node("MatMul", ["h4", "W3"], ["h5"]), node("LogSoftmax", ["h5"], axis=1)]
    inputs = {"x": r(4, 5), "W1": r(6, 5), "b1": r(6), "W2": r(6, 4), "b2": r(4), "W3": r(4, 3)}
    check_gradients(nodes, inputs, list(inputs))


def test_small_cnn():
    """Conv -> BatchNormalization (training) -> Relu -> MaxPool -> Conv -> GlobalAveragePool
    -> Flatten -> Gemm -> SoftmaxCrossEntropyLoss."""
    labels = numpy_helper.from_array(np.array([0, 2, 1], np.int64), "labels")
    stats = [numpy_helper.from_array(np.zeros(4), "mean"), numpy_helper.from_array(np.ones(4), "var")]
    nodes = [node("Conv", ["x", "k1", "c1"], ["a"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["b", "rm", "rv"], training_mode=1),
             node("Relu", ["b"], ["c"]), node("MaxPool", ["c"], ["d"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["d", "k2"], ["e"], strides=[1, 1]), node("GlobalAveragePool", ["e"], ["f"]),
             node("Flatten", ["f"], ["g"]), node("Gemm", ["g", "W", "bias"], ["logits"]),
             node("SoftmaxCrossEntropyLoss", ["logits", "labels"])]
    inputs = {"x": r(3, 1, 6, 6), "k1": r(4, 1, 3, 3), "c1": r(4), "gamma": r(4, positive=True), "beta": r(4),
              "k2": r(5, 4, 2, 2), "W": r(5, 3), "bias": r(3)}
    check_gradients(nodes, inputs, [k for k in inputs if k != "x"], initializers=[labels, *stats], rtol=1e-5)


def test_transformer_block_against_torch():
    """Token embedding (Gather) + position, LayerNormalization, single-head attention (MatMul,
    Softmax), residuals, an Erf-GELU MLP, in float32 through onnxruntime."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    d, seq, vocab = 8, 5, 11
    ids = np.array([[1, 4, 4, 0, 10], [3, 3, 7, 2, 9]], np.int64)
    weights = {name: (rng.standard_normal(shape) * 0.3).astype(np.float32) for name, shape in {
        "embed": (vocab, d), "pos": (seq, d), "ln_s": (d,), "ln_b": (d,), "wq": (d, d), "wk": (d, d), "wv": (d, d),
        "wo": (d, d), "ln2_s": (d,), "ln2_b": (d,), "w1": (d, 2 * d), "b1": (2 * d,), "w2": (2 * d, d)}.items()}
    consts = [numpy_helper.from_array(v, k) for k, v in {
        "ids": ids, "scale": np.float32(1 / np.sqrt(d)), "half": np.float32(0.5),
        "root": np.float32(1 / np.sqrt(2)), "one": np.float32(1.0)}.items()]
    nodes = [node("Gather", ["embed", "ids"], ["tok"]), node("Add", ["tok", "pos"], ["h"]),
             node("LayerNormalization", ["h", "ln_s", "ln_b"], ["n"], epsilon=1e-5),
             node("MatMul", ["n", "wq"], ["q"]), node("MatMul", ["n", "wk"], ["k"]), node("MatMul", ["n", "wv"], ["v"]),
             node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), node("MatMul", ["q", "kt"], ["s0"]),
             node("Mul", ["s0", "scale"], ["s"]), node("Softmax", ["s"], ["p"], axis=-1),
             node("MatMul", ["p", "v"], ["att"]), node("MatMul", ["att", "wo"], ["o"]), node("Add", ["h", "o"], ["h2"]),
             node("LayerNormalization", ["h2", "ln2_s", "ln2_b"], ["n2"], epsilon=1e-5),
             node("MatMul", ["n2", "w1"], ["u0"]), node("Add", ["u0", "b1"], ["u"]),
             node("Mul", ["u", "root"], ["ur"]), node("Erf", ["ur"], ["ue"]), node("Add", ["ue", "one"], ["ue1"]),
             node("Mul", ["u", "ue1"], ["ug"]), node("Mul", ["ug", "half"], ["gelu"]),
             node("MatMul", ["gelu", "w2"], ["m"]), node("Add", ["h2", "m"])]

    def block(**t):
        h = F.embedding(torch.from_numpy(ids), t["embed"]) + t["pos"]
        n = F.layer_norm(h, (d,), t["ln_s"], t["ln_b"], 1e-5)
        q, k, v = n @ t["wq"], n @ t["wk"], n @ t["wv"]
        h2 = h + (torch.softmax(q @ k.transpose(1, 2) / np.sqrt(d), -1) @ v) @ t["wo"]
        n2 = F.layer_norm(h2, (d,), t["ln2_s"], t["ln2_b"], 1e-5)
        return h2 + F.gelu(n2 @ t["w1"] + t["b1"]) @ t["w2"]
    check_against_torch(nodes, weights, block, consts, rtol=2e-4, atol=2e-5)
