"""The rules for slicing, gathering, convolution, pooling, normalization, dropout and losses,
against central finite differences in float64 (and, for Dropout, against its formula)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphopt.autodiff import add_gradients
from tests.gradcheck import (
    D,
    _model,
    _run,
    check_against_function,
    check_gradients,
    node,
    projection,
    r,
)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def test_elu_and_clip():
    x = r(3, 4)
    x[np.abs(x) < 1e-2] = 0.3
    check_gradients([node("Elu", ["x"], alpha=0.7)], {"x": x}, ["x"])
    x[np.abs(np.abs(x) - 0.5) < 1e-2] = 0.2  # away from the bounds
    check_gradients([node("Clip", ["x", "lo", "hi"])], {"x": x}, ["x"],
                    initializers=[const("lo", -0.5), const("hi", 0.5)])
    check_gradients([node("Clip", ["x", "", "hi"])], {"x": x}, ["x"], initializers=[const("hi", 0.5)])


@pytest.mark.parametrize("axes, keepdims", [([1], 0), ([0, 2], 1), (None, 0)])
def test_reduce_max(axes, keepdims):
    inputs, inits = (["x"], []) if axes is None else (["x", "axes"], [const("axes", np.array(axes, np.int64))])
    check_gradients([node("ReduceMax", inputs, keepdims=keepdims)], {"x": r(2, 3, 4)}, ["x"], initializers=inits)


def test_reduce_max_shares_the_gradient_between_ties():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])
    model = _model([node("ReduceMax", ["x", "axes"], keepdims=0)], {"x": x}, "y",
                   initializers=[const("axes", np.array([1], np.int64))])
    weights = projection(model)
    (_, dx) = _run(add_gradients(model, "loss", ["x"]), {"x": x})
    np.testing.assert_allclose(dx, [[0, weights[0] / 2, weights[0] / 2], [weights[1], 0, 0]])


def test_concat_and_split():
    check_gradients([node("Concat", ["a", "b", "c"], axis=-1)], {"a": r(2, 3), "b": r(2, 1), "c": r(2, 2)},
                    ["a", "b", "c"])
    nodes = [node("Split", ["x", "sizes"], ["p", "q"], axis=1), node("Mul", ["p", "p"], ["pp"]),
             node("Concat", ["q", "pp"], ["y"], axis=1)]
    check_gradients(nodes, {"x": r(2, 5)}, ["x"], initializers=[const("sizes", np.array([2, 3], np.int64))])


def test_split_with_an_output_that_does_not_reach_the_loss():
    nodes = [node("Split", ["x"], ["p", "q", "unused"], axis=0, num_outputs=3), node("Add", ["p", "q"])]
    check_gradients(nodes, {"x": r(6, 2)}, ["x"])


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([1], [3], [1], None), ([-3, 0], [100, -1], [2, 0], None), ([0], [5], [1], [2]),
    ([4, 3], [0, -10], [1, 2], [-2, -1]),
    ([1], [1], [0], None),
])
def test_slice(starts, ends, axes, steps):
    names = ["x", "starts", "ends", "axes"] + ([] if steps is None else ["steps"])
    inits = [const(n, np.array(v, np.int64)) for n, v in zip(names[1:], (starts, ends, axes, steps))]
    check_gradients([node("Slice", names)], {"x": r(3, 5, 4)}, ["x"], initializers=inits)


@pytest.mark.parametrize("indices, axis", [([[0, 2], [2, -1]], 0), ([1, 1, 0], 1), (2, 2), ([[0], [-2]], -1)])
def test_gather_adds_repeated_indices(indices, axis):
    check_gradients([node("Gather", ["x", "i"], axis=axis)], {"x": r(3, 4, 3)}, ["x"],
                    initializers=[const("i", np.array(indices, np.int64))])


def test_expand():
    check_gradients([node("Expand", ["x", "shape"])], {"x": r(3, 1)}, ["x"],
                    initializers=[const("shape", np.array([2, 3, 4], np.int64))])


CONVOLUTIONS = [
    ("1-D", (2, 3, 7), (4, 3, 3), {}),
    ("1-D strided, padded, dilated", (2, 2, 9), (3, 2, 2), {"strides": [2], "pads": [1, 2], "dilations": [2]}),
    ("2-D", (2, 3, 5, 4), (2, 3, 3, 2), {"pads": [1, 0, 1, 1]}),
    ("2-D strides 2 with a remainder", (1, 2, 6, 7), (3, 2, 3, 3), {"strides": [2, 3]}),
    ("2-D depthwise SAME_UPPER", (1, 3, 5, 6), (3, 1, 3, 3), {"group": 3, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", [c[1:] for c in CONVOLUTIONS], ids=[c[0] for c in CONVOLUTIONS])
def test_conv(x_shape, w_shape, attrs):
    check_gradients([node("Conv", ["x", "w", "b"], **attrs)], {"x": r(*x_shape), "w": r(*w_shape), "b": r(w_shape[0])},
                    ["x", "w", "b"])


@pytest.mark.parametrize("attrs", [{"kernel_shape": [2, 2]},
                                   {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 1, 1, 0]},
                                   {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}])
def test_max_pool(attrs):
    check_gradients([node("MaxPool", ["x"], **attrs)], {"x": r(2, 2, 5, 4)}, ["x"])


def test_max_pool_1d_with_overlapping_windows():
    check_gradients([node("MaxPool", ["x"], kernel_shape=[3], strides=[1])], {"x": r(2, 3, 6)}, ["x"])


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2]}, {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 1, 1, 0]},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 1, 1, 0], "count_include_pad": 1},
    {"kernel_shape": [3], "strides": [2], "auto_pad": "SAME_UPPER"},
])
def test_average_pool(attrs):
    shape = (2, 3, 7) if len(attrs["kernel_shape"]) == 1 else (2, 2, 5, 4)
    check_gradients([node("AveragePool", ["x"], **attrs)], {"x": r(*shape)}, ["x"])


def test_global_average_pool():
    check_gradients([node("GlobalAveragePool", ["x"])], {"x": r(2, 3, 4, 2)}, ["x"])


@pytest.mark.parametrize("training_mode", [1, 0])
def test_batch_normalization(training_mode):
    outputs = ["y", "running_mean", "running_var"] if training_mode else ["y"]
    inputs = {"x": r(4, 3, 2, 2), "scale": r(3), "bias": r(3)}
    inits = [const("mean", r(3)), const("var", r(3, positive=True))]
    check_gradients([node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outputs, epsilon=1e-3,
                          momentum=0.8, training_mode=training_mode)], inputs, ["x", "scale", "bias"],
                    initializers=inits)


@pytest.mark.parametrize("axis, scale_shape", [(-1, (4,)), (1, (3, 4)), (2, (1, 4))])
def test_layer_normalization(axis, scale_shape):
    inputs = {"x": r(2, 3, 4), "scale": r(*scale_shape), "bias": r(*scale_shape)}
    check_gradients([node("LayerNormalization", ["x", "scale", "bias"], axis=axis, epsilon=1e-3)], inputs,
                    ["x", "scale", "bias"])


def lrn(x, size, alpha, beta, bias):
    """LRN as the ONNX specification defines it (onnx.reference's LRN windows the wrong axis)."""
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = np.pad(x * x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    sums = sum(squares[:, i:i + x.shape[1]] for i in range(size))
    return x / (bias + alpha / size * sums) ** beta


@pytest.mark.parametrize("size", [3, 4])
def test_lrn(size):
    attrs = {"size": size, "alpha": 0.3, "beta": 0.6, "bias": 1.5}
    check_against_function([node("LRN", ["x"], **attrs)], r(2, 5, 3, 2), lambda x: lrn(x, **attrs))


@pytest.mark.parametrize("with_mask", [True, False])
def test_dropout_gradient_is_the_mask_over_the_keep_probability(with_mask):
    """The mask is random, so the check is the formula itself, on the mask of the same run."""
    x = r(50, 40)
    outputs = ["y", "mask"] if with_mask else ["y"]
    nodes = [node("Dropout", ["x", "ratio", "training"], outputs, seed=5),
             node("Identity", ["y"], ["out"])]
    model = _model(nodes, {"x": x}, "out", initializers=[const("ratio", 0.3), const("training", True)])
    weights = projection(model)
    grad_model = add_gradients(model, "loss", ["x"])
    grad_model.graph.output.append(helper.make_tensor_value_info("y", D, None))
    values = dict(zip([o.name for o in grad_model.graph.output], _run(grad_model, {"x": x})))
    kept = values["y"] != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(values["y"], np.where(kept, x / 0.7, 0.0), rtol=1e-7)
    np.testing.assert_allclose(values["x.grad"], np.where(kept, weights / 0.7, 0.0), rtol=1e-7)


def test_dropout_in_inference_mode_passes_the_gradient_through():
    check_gradients([node("Dropout", ["x", "ratio", "training"])], {"x": r(3, 4)}, ["x"],
                    initializers=[const("ratio", 0.3), const("training", False)])


LOSS_CASES = [
    ("mean", None, None, (5, 4)), ("sum", None, None, (5, 4)), ("none", None, None, (5, 4)),
    ("mean", [0.5, 2.0, 1.0, 0.1], None, (5, 4)), ("mean", None, 2, (5, 4)),
    ("mean", [0.5, 2.0, 1.0, 0.1], 1, (5, 4, 3)),
    ("none", [0.5, 2.0, 1.0, 0.1], 3, (5, 4, 3)),
]


def _loss_inputs(weights, ignore_index, shape):
    rng = np.random.default_rng(4)
    target = rng.integers(0, shape[1], size=(shape[0], *shape[2:]))
    if ignore_index is not None:
        target.flat[[0, 3]] = ignore_index
    names = ["x", "t"] + (["w"] if weights is not None else [])
    inits = [const("t", target.astype(np.int64))] + ([const("w", np.array(weights))] if weights is not None else [])
    attrs = {} if ignore_index is None else {"ignore_index": ignore_index}
    return names, inits, attrs


@pytest.mark.parametrize("reduction, weights, ignore_index, shape", LOSS_CASES)
def test_softmax_cross_entropy(reduction, weights, ignore_index, shape):
    names, inits, attrs = _loss_inputs(weights, ignore_index, shape)
    check_gradients([node("SoftmaxCrossEntropyLoss", names, reduction=reduction, **attrs)], {"x": r(*shape)}, ["x"],
                    initializers=inits)


def test_softmax_cross_entropy_with_its_log_prob_output_used():
    names, inits, _ = _loss_inputs(None, None, (4, 3))
    nodes = [node("SoftmaxCrossEntropyLoss", names, ["l", "lp"]), node("ReduceSum", ["lp"], ["s"], keepdims=0),
             node("Add", ["l", "s"])]
    check_gradients(nodes, {"x": r(4, 3)}, ["x"], initializers=inits)


@pytest.mark.parametrize("reduction, weights, ignore_index, shape", LOSS_CASES)
def test_negative_log_likelihood(reduction, weights, ignore_index, shape):
    names, inits, attrs = _loss_inputs(weights, ignore_index, shape)
    check_gradients([node("NegativeLogLikelihoodLoss", names, reduction=reduction, **attrs)], {"x": r(*shape)}, ["x"],
                    initializers=inits)


MORE_UNARY = [("Sin", {}), ("Cos", {}), ("Softplus", {}), ("Selu", {}), ("Selu", {"alpha": 1.5, "gamma": 0.8}),
              ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {})]


@pytest.mark.parametrize("op, attrs", MORE_UNARY, ids=[f"{o}-{i}" for i, (o, _) in enumerate(MORE_UNARY)])
def test_more_unary(op, attrs):
    x = r(2, 3, 4) * 2.5
    for kink in (0.0, -3.0, 3.0, (0 - 0.4) / 0.3, (1 - 0.4) / 0.3):
        x[np.abs(x - kink) < 1e-2] += 0.05  # keep the finite difference off the kinks
    if op == "HardSwish":  # onnx.reference's float64 HardSwish scales by 1/6 rounded to float32 (1e-8 off):
        check_against_function([node(op, ["x"])], x, lambda v: v * np.clip(v / 6 + 0.5, 0, 1))  # the formula's
    else:
        check_gradients([node(op, ["x"], **attrs)], {"x": x}, ["x"])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    """Exact Gelu is checked to 5e-8: ONNX Runtime has no float64 Erf and onnx.reference's rounds erf to
    float32 (half an ulp: 3e-8), so the gradient graph's Phi(x) is exact to 1.5e-8 only, times |R| < 3."""
    import math

    def gelu(x):
        if approximate == "tanh":
            return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    check_against_function([node("Gelu", ["x"], approximate=approximate)], r(2, 5) * 2, gelu,
                           atol=1e-8 if approximate == "tanh" else 5e-8)


@pytest.mark.parametrize("op", ["Max", "Min", "Mean"])
def test_max_min_mean_of_broadcast_inputs(op):
    check_gradients([node(op, ["a", "b", "c"])], {"a": r(2, 3), "b": r(3), "c": r(2, 1)}, ["a", "b", "c"])


def test_max_shares_the_gradient_between_ties():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])
    model = _model([node("Max", ["a", "b"])], {"a": a, "b": b}, "y")
    weights = projection(model)
    _, da, db = _run(add_gradients(model, "loss", ["a", "b"]), {"a": a, "b": b})
    np.testing.assert_allclose(da, [weights[0] / 2, 0, weights[2]])
    np.testing.assert_allclose(db, [weights[0] / 2, weights[1], 0])


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL2", "ReduceLogSumExp"])
@pytest.mark.parametrize("axes, keepdims", [([1], 0), ([0, 2], 1), (None, 0)])
def test_more_reductions(op, axes, keepdims):
    inputs, inits = (["x"], []) if axes is None else (["x", "axes"], [const("axes", np.array(axes, np.int64))])
    check_gradients([node(op, inputs, keepdims=keepdims)], {"x": r(2, 3, 4)}, ["x"], initializers=inits)


@pytest.mark.parametrize("pads, axes", [([1, 0, 2, 3], None), ([-1, 2, 1, -2], None), ([2, 1], [-1])])
def test_pad_constant(pads, axes):
    names = ["x", "pads", "value"] + ([] if axes is None else ["axes"])
    inits = [const("pads", np.array(pads, np.int64)), const("value", np.array(0.7))]
    inits += [] if axes is None else [const("axes", np.array(axes, np.int64))]
    check_gradients([node("Pad", names)], {"x": r(3, 4)}, ["x"], initializers=inits)


def test_tile():
    check_gradients([node("Tile", ["x", "repeats"])], {"x": r(2, 3, 1)}, ["x"],
                    initializers=[const("repeats", np.array([2, 1, 3], np.int64))])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements_adds_repeated_indices(axis):
    indices = np.random.default_rng(5).integers(-3, 3, size=(3, 4))
    check_gradients([node("GatherElements", ["x", "i"], axis=axis)], {"x": r(3, 4)}, ["x"],
                    initializers=[const("i", indices.astype(np.int64))])


TRANSPOSED = [
    ("1-D strided", (2, 3, 4), (3, 2, 3), {"strides": [2], "pads": [1, 0], "output_padding": [1]}),
    ("2-D dilated", (1, 2, 3, 3), (2, 3, 2, 2), {"dilations": [2, 1], "strides": [1, 2], "pads": [0, 1, 1, 0]}),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", [t[1:] for t in TRANSPOSED], ids=[t[0] for t in TRANSPOSED])
def test_conv_transpose(x_shape, w_shape, attrs):
    check_gradients([node("ConvTranspose", ["x", "w", "b"], **attrs)],
                    {"x": r(*x_shape), "w": r(*w_shape), "b": r(w_shape[1])}, ["x", "w", "b"])


def test_instance_normalization():
    check_gradients([node("InstanceNormalization", ["x", "scale", "bias"], epsilon=1e-3)],
                    {"x": r(2, 3, 4, 2), "scale": r(3), "bias": r(3)}, ["x", "scale", "bias"])
