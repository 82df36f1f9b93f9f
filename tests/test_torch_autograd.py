"""The gradient graphs, run by ONNX Runtime in float32, against torch.autograd on the same inputs.

A second oracle beside the float64 finite differences, and the one that covers what
onnx.reference cannot run in float64 (grouped ConvTranspose with pads and dilations).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.autodiff import add_gradients
from tests.gradcheck import _model, node, projection
from tests.gradcheck import check_against_torch as compare

torch = pytest.importorskip("torch")
F = torch.nn.functional
rng = np.random.default_rng(7)  # each test gets its own: conftest.py reseeds it from the node id


def r(*shape, positive=False):
    x = rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.5 if positive else x


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


CONVOLUTIONS = [
    ((2, 4, 7, 6), (6, 2, 3, 2), {"group": 2, "dilations": [2, 1], "pads": [1, 0, 1, 0], "strides": [2, 1]}),
    ((2, 6, 9), (6, 1, 3), {"group": 6, "dilations": [2], "pads": [2, 2], "strides": [2]}),
    ((1, 3, 8, 8), (5, 3, 3, 3), {"strides": [3, 2], "pads": [1, 1, 1, 1]}),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CONVOLUTIONS)
def test_conv(x_shape, w_shape, attrs):
    rank = len(x_shape) - 2
    conv = F.conv1d if rank == 1 else F.conv2d
    pads = attrs.get("pads", [0] * 2 * rank)[:rank]  # symmetric in these cases
    compare([node("Conv", ["x", "w", "b"], **attrs)], {"x": r(*x_shape), "w": r(*w_shape), "b": r(w_shape[0])},
            lambda x, w, b: conv(x, w, b, stride=attrs.get("strides", 1), padding=pads,
                                 dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1)))


def test_pools():
    x = r(2, 3, 7, 6)
    compare([node("MaxPool", ["x"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1])], {"x": x},
            lambda x: F.max_pool2d(x, (3, 2), (2, 2), (1, 1)))
    for include in (0, 1):
        compare([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 1],
                      count_include_pad=include)], {"x": x},
                lambda x: F.avg_pool2d(x, 3, (2, 1), 1, count_include_pad=bool(include)))  # noqa: B023
    compare([node("GlobalAveragePool", ["x"])], {"x": x}, lambda x: F.adaptive_avg_pool2d(x, 1))


def test_normalizations():
    x, scale, bias = r(4, 3, 5, 5), r(3), r(3)
    compare([node("BatchNormalization", ["x", "scale", "bias", "m", "v"], ["y", "rm", "rv"], training_mode=1,
                  epsilon=1e-3)], {"x": x, "scale": scale, "bias": bias},
            lambda x, scale, bias: F.batch_norm(x, None, None, scale, bias, training=True, eps=1e-3),
            initializers=[const("m", np.zeros(3, np.float32)), const("v", np.ones(3, np.float32))])
    compare([node("LayerNormalization", ["x", "scale", "bias"], epsilon=1e-3)],
            {"x": r(2, 3, 8), "scale": r(8), "bias": r(8)},
            lambda x, scale, bias: F.layer_norm(x, (8,), scale, bias, eps=1e-3))
    compare([node("LRN", ["x"], size=3, alpha=0.3, beta=0.6, bias=1.5)], {"x": r(2, 5, 3, 2)},
            lambda x: F.local_response_norm(x, 3, alpha=0.3, beta=0.6, k=1.5))


@pytest.mark.parametrize("reduction, ignore_index", [("mean", None), ("sum", 1), ("none", None), ("mean", 2)])
def test_cross_entropy_and_nll(reduction, ignore_index):
    target = rng.integers(0, 4, size=(6, 3)).astype(np.int64)
    weight = np.array([0.5, 2.0, 1.0, 0.3], np.float32)
    attrs = {"reduction": reduction} | ({} if ignore_index is None else {"ignore_index": ignore_index})
    torch_kwargs = {"reduction": reduction, "weight": torch.from_numpy(weight),
                    "ignore_index": -100 if ignore_index is None else ignore_index}
    inits = [const("t", target), const("w", weight)]
    compare([node("SoftmaxCrossEntropyLoss", ["x", "t", "w"], **attrs)], {"x": r(6, 4, 3)},
            lambda x: F.cross_entropy(x, torch.from_numpy(target), **torch_kwargs), initializers=inits)
    compare([node("NegativeLogLikelihoodLoss", ["x", "t", "w"], **attrs)], {"x": r(6, 4, 3)},
            lambda x: F.nll_loss(x, torch.from_numpy(target), **torch_kwargs), initializers=inits)


def test_embedding_gelu_and_softmax():
    ids = np.array([[0, 3, 3], [1, 0, 4]], np.int64)
    half, root = const("half", np.float32(0.5)), const("root", np.float32(1 / np.sqrt(2)))
    one = const("one", np.float32(1.0))
    nodes = [node("Gather", ["table", "ids"], ["e"]), node("Mul", ["e", "root"], ["s"]), node("Erf", ["s"], ["f"]),
             node("Add", ["f", "one"], ["f1"]), node("Mul", ["e", "f1"], ["g0"]), node("Mul", ["g0", "half"], ["gelu"]),
             node("Softmax", ["gelu"], axis=-1)]
    compare(nodes, {"table": r(5, 4)}, lambda table: F.softmax(F.gelu(F.embedding(torch.from_numpy(ids), table)), -1),
            initializers=[const("ids", ids), half, root, one])


def test_slices_concat_clip_elu():
    starts, ends, steps = (const(n, np.array(v, np.int64)) for n, v in (("s", [1, 0]), ("e", [4, 5]), ("st", [2, 1])))
    axes = const("a", np.array([0, 1], np.int64))
    lo, hi = const("lo", np.float32(-0.5)), const("hi", np.float32(0.8))
    nodes = [node("Slice", ["x", "s", "e", "a", "st"], ["sl"]), node("Elu", ["sl"], ["el"], alpha=0.5),
             node("Clip", ["x", "lo", "hi"], ["cl"]), node("Concat", ["el", "cl"], axis=0)]
    compare(nodes, {"x": r(5, 5)}, lambda x: torch.cat([F.elu(x[1:4:2, 0:5], 0.5), x.clamp(-0.5, 0.8)], 0),
            initializers=[starts, ends, steps, axes, lo, hi])


def _positive(*shape):
    return r(*shape, positive=True)


# op, attributes, inputs, the same in torch
ELEMENTWISE = [
    ("Add", {}, {"a": r(2, 3), "b": r(3)}, lambda a, b: a + b),
    ("Sub", {}, {"a": r(2, 3), "b": r(2, 1)}, lambda a, b: a - b),
    ("Mul", {}, {"a": r(2, 3), "b": r(1, 3)}, lambda a, b: a * b),
    ("Div", {}, {"a": r(2, 3), "b": _positive(3)}, lambda a, b: a / b),
    ("Pow", {}, {"a": _positive(2, 3), "b": r(2, 3)}, lambda a, b: a ** b),
    ("Sum", {}, {"a": r(2, 3), "b": r(3), "c": r(2, 1)}, lambda a, b, c: a + b + c),
    ("MatMul", {}, {"a": r(2, 3, 4), "b": r(4, 5)}, lambda a, b: a @ b),
    ("Gemm", {"alpha": 0.5, "beta": 2.0, "transA": 1}, {"a": r(4, 3), "b": r(4, 2), "c": r(2)},
     lambda a, b, c: 0.5 * a.T @ b + 2.0 * c),
]
UNARY = [
    ("Neg", {}, lambda x: -x), ("Identity", {}, lambda x: x), ("Relu", {}, torch.relu),
    ("LeakyRelu", {"alpha": 0.1}, lambda x: F.leaky_relu(x, 0.1)), ("Sigmoid", {}, torch.sigmoid),
    ("Tanh", {}, torch.tanh), ("Exp", {}, torch.exp), ("Abs", {}, torch.abs),
    ("Sqrt", {}, torch.sqrt), ("Log", {}, torch.log), ("Reciprocal", {}, torch.reciprocal),
    ("LogSoftmax", {"axis": 1}, lambda x: F.log_softmax(x, 1)),
    ("Transpose", {"perm": [2, 0, 1]}, lambda x: x.permute(2, 0, 1)), ("Flatten", {"axis": 1}, lambda x: x.flatten(1)),
    ("Cast", {"to": 11}, lambda x: x.double()),
]


@pytest.mark.parametrize("op, attrs, inputs, torch_fn", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise_and_linear(op, attrs, inputs, torch_fn):
    compare([node(op, list(inputs), **attrs)], inputs, torch_fn)


@pytest.mark.parametrize("op, attrs, torch_fn", UNARY, ids=[u[0] for u in UNARY])
def test_unary(op, attrs, torch_fn):
    x = _positive(2, 3, 4) if op in ("Sqrt", "Log", "Reciprocal") else r(2, 3, 4)
    x[np.abs(x) < 1e-2] = 0.5  # away from the kinks of Relu, LeakyRelu and Abs
    outputs = ["c"] if op == "Cast" else ["y"]
    nodes = [node(op, ["x"], outputs, **attrs)] + ([node("Cast", ["c"], ["y"], to=1)] if op == "Cast" else [])
    compare(nodes, {"x": x}, lambda x: torch_fn(x).float())


def test_reductions_reshapes_split_expand_where():
    axes = const("axes", np.array([1], np.int64))
    shape = const("shape", np.array([3, 8], np.int64))
    target = const("target", np.array([2, 3, 4], np.int64))
    sizes = const("sizes", np.array([1, 2], np.int64))
    mask = const("mask", np.array([[True, False, True, True]]))
    nodes = [node("ReduceSum", ["x", "axes"], ["s"], keepdims=1), node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             node("ReduceMax", ["x", "axes"], ["mx"], keepdims=0), node("Expand", ["s", "target"], ["e"]),
             node("Reshape", ["e", "shape"], ["rs"]), node("Split", ["rs", "sizes"], ["p", "q"], axis=0),
             node("Unsqueeze", ["m", "axes"], ["um"]), node("Squeeze", ["um", "axes"], ["sm"]),
             node("Where", ["mask", "sm", "mx"], ["w"]), node("ReduceSum", ["q"], ["qs"], keepdims=0),
             node("Mul", ["p", "qs"], ["pq"]), node("ReduceSum", ["pq"], ["pqs"], keepdims=0),
             node("Mul", ["w", "pqs"])]
    mask_t = torch.tensor([[True, False, True, True]])

    def torch_fn(x):
        s = x.sum(1, keepdim=True)
        p, q = s.expand(2, 3, 4).reshape(3, 8).split([1, 2], 0)
        return torch.where(mask_t, x.mean(1), x.amax(1)) * (p * q.sum()).sum()
    compare(nodes, {"x": r(2, 3, 4)}, torch_fn, initializers=[axes, shape, target, sizes, mask])


def test_dropout_in_training_mode_matches_torch_given_the_same_mask():
    """Dropout's mask is random: torch multiplies by the mask ONNX Runtime drew in the same run."""
    x = r(40, 30)
    model = _model([node("Dropout", ["x", "ratio", "training"], ["y", "mask"])], {"x": x}, "y",
                   [const("ratio", np.float32(0.4)), const("training", np.array(True))])
    weights = torch.tensor(projection(model))
    grad_model = add_gradients(model, "loss", ["x"])
    grad_model.graph.output.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, None))
    session = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    tx = torch.tensor(x, requires_grad=True)
    (tx * torch.from_numpy(results["mask"]) / 0.6 * weights).sum().backward()
    np.testing.assert_allclose(results["x.grad"], tx.grad.numpy(), rtol=1e-6)


MORE_UNARY = [
    ("Sin", {}, torch.sin), ("Cos", {}, torch.cos), ("Softplus", {}, lambda x: F.softplus(x)),
    ("Selu", {}, lambda x: F.selu(x)), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, lambda x: F.hardsigmoid(x)),
    ("HardSwish", {}, lambda x: F.hardswish(x)), ("Gelu", {}, lambda x: F.gelu(x)),
    ("Gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
]


@pytest.mark.parametrize("op, attrs, torch_fn", MORE_UNARY, ids=[f"{m[0]}-{i}" for i, m in enumerate(MORE_UNARY)])
def test_more_unary(op, attrs, torch_fn):
    x = r(3, 4, 5) * 2.5
    for kink in (0.0, -3.0, 3.0):
        x[np.abs(x - kink) < 1e-2] += 0.05
    compare([node(op, ["x"], **attrs)], {"x": x}, torch_fn)


def test_max_min_mean_reductions_pad_tile_gather_elements():
    idx = np.random.default_rng(1).integers(0, 4, size=(3, 4)).astype(np.int64)
    consts = [const("axes", np.array([1], np.int64)), const("pads", np.array([1, 0, 0, 2], np.int64)),
              const("repeats", np.array([1, 2], np.int64)), const("idx", idx)]
    nodes = [node("Max", ["a", "b"], ["mx"]), node("Min", ["a", "b"], ["mn"]), node("Mean", ["mx", "mn", "b"], ["me"]),
             node("ReduceSumSquare", ["me", "axes"], ["ss"], keepdims=1), node("ReduceL2", ["a", "axes"], ["l2"]),
             node("ReduceLogSumExp", ["b", "axes"], ["ls"]), node("Add", ["ss", "l2"], ["s1"]),
             node("Add", ["s1", "ls"], ["s2"]), node("Mul", ["me", "s2"], ["prod"]),
             node("Pad", ["prod", "pads"], ["p"]),
             node("Tile", ["p", "repeats"], ["t"]), node("GatherElements", ["a", "idx"], ["ge"], axis=1),
             node("ReduceSum", ["ge"], ["gs"], keepdims=0), node("Mul", ["t", "gs"])]
    tidx = torch.from_numpy(idx)

    def torch_fn(a, b):
        mx, mn = torch.maximum(a, b), torch.minimum(a, b)
        me = (mx + mn + b) / 3
        s = (me * me).sum(1, keepdim=True) + a.norm(dim=1, keepdim=True) + torch.logsumexp(b, 1, keepdim=True)
        p = F.pad(me * s, (0, 2, 1, 0))
        return p.repeat(1, 2) * torch.gather(a, 1, tidx).sum()
    compare(nodes, {"a": r(3, 4), "b": r(3, 4)}, torch_fn, initializers=consts)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cum_sum(exclusive, reverse):
    def torch_fn(x):
        x = x.flip(1) if reverse else x
        y = torch.cumsum(x, 1) - (x if exclusive else 0)
        return y.flip(1) if reverse else y
    compare([node("CumSum", ["x", "axis"], exclusive=exclusive, reverse=reverse)], {"x": r(3, 5, 2)}, torch_fn,
            initializers=[const("axis", np.array(1, np.int64))])


def test_conv_transpose_and_instance_normalization():
    attrs = {"strides": [2, 2], "pads": [1, 0, 1, 0], "output_padding": [1, 0], "dilations": [1, 2], "group": 2}
    compare([node("ConvTranspose", ["x", "w", "b"], **attrs)], {"x": r(2, 4, 3, 4), "w": r(4, 3, 3, 2), "b": r(6)},
            lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=(1, 0), output_padding=(1, 0), groups=2,
                                               dilation=(1, 2)))
    compare([node("InstanceNormalization", ["x", "scale", "bias"], epsilon=1e-3)],
            {"x": r(2, 3, 4, 5), "scale": r(3), "bias": r(3)},
            lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=1e-3))


def _resize(mode, coordinates, nearest_mode="floor"):
    return node("Resize", ["x", "", "scales"], mode=mode, coordinate_transformation_mode=coordinates,
                nearest_mode=nearest_mode)


# Resize nodes as torch's exporters write them for F.interpolate, the same call in torch
INTERPOLATIONS = [
    ("nearest", _resize("nearest", "asymmetric"), [1, 1, 2, 3], (2, 3, 3, 4),
     lambda x: F.interpolate(x, scale_factor=(2, 3), mode="nearest")),
    ("nearest downsampling", _resize("nearest", "asymmetric"), [1, 1, 0.5, 0.5], (1, 2, 6, 8),
     lambda x: F.interpolate(x, scale_factor=0.5, mode="nearest")),
    ("bilinear", _resize("linear", "pytorch_half_pixel"), [1, 1, 2, 1.5], (2, 3, 3, 4),
     lambda x: F.interpolate(x, scale_factor=(2, 1.5), mode="bilinear", align_corners=False)),
    ("bilinear downsampling", _resize("linear", "half_pixel"), [1, 1, 0.5, 0.5], (1, 2, 6, 8),
     lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)),
    ("bilinear align_corners", _resize("linear", "align_corners"), [1, 1, 2, 3], (2, 3, 3, 4),
     lambda x: F.interpolate(x, scale_factor=(2, 3), mode="bilinear", align_corners=True)),
    ("trilinear", _resize("linear", "pytorch_half_pixel"), [1, 1, 2, 2, 1.5], (1, 2, 2, 3, 4),
     lambda x: F.interpolate(x, scale_factor=(2, 2, 1.5), mode="trilinear", align_corners=False)),
    ("trilinear align_corners", _resize("linear", "align_corners"), [1, 1, 2, 2, 2], (1, 2, 2, 3, 2),
     lambda x: F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)),
]


@pytest.mark.parametrize("resize, scales, shape, torch_fn", [i[1:] for i in INTERPOLATIONS],
                         ids=[i[0] for i in INTERPOLATIONS])
def test_interpolate(resize, scales, shape, torch_fn):
    compare([resize], {"x": r(*shape)}, torch_fn, initializers=[const("scales", np.array(scales, np.float32))])


EINSUMS = [
    ("matmul", "ij,jk->ik", [(3, 4), (4, 5)]),
    ("attention scores", "bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("attention values", "bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("ellipsis", "...ij,...jk->...ik", [(2, 1, 3, 4), (1, 3, 4, 5)]),
    ("summed-out label", "ijk,jl->il", [(2, 3, 4), (3, 5)]),
    ("implicit output", "ij,jk", [(3, 4), (4, 2)]),
    ("outer product and a broadcast ellipsis", "i...,...->...i", [(2, 3, 4), (1, 4)]),
]


@pytest.mark.parametrize("equation, shapes", [e[1:] for e in EINSUMS], ids=[e[0] for e in EINSUMS])
def test_einsum(equation, shapes):
    inputs = {f"x{i}": r(*shape) for i, shape in enumerate(shapes)}
    compare([node("Einsum", list(inputs), equation=equation)], inputs,
            lambda **xs: torch.einsum(equation, *xs.values()))


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1)], ids=["one slope", "per channel"])
def test_prelu_and_mish(slope_shape):
    x = r(2, 3, 4, 5)
    x[np.abs(x) < 1e-2] = 0.3
    compare([node("PRelu", ["x", "slope"])], {"x": x, "slope": r(*slope_shape)},
            lambda x, slope: F.prelu(x, slope.reshape(-1)))
    compare([node("Mish", ["x"])], {"x": x * 3}, lambda x: F.mish(x))


def test_reduce_min_l1_log_sum_and_cast_like():
    axes = const("axes", np.array([1], np.int64))
    x = r(3, 4, 2)
    x[np.abs(x) < 1e-2] = 0.3
    compare([node("ReduceMin", ["x", "axes"], keepdims=0)], {"x": x}, lambda x: x.amin(1), initializers=[axes])
    compare([node("ReduceL1", ["x", "axes"], keepdims=1)], {"x": x}, lambda x: x.abs().sum(1, keepdim=True),
            initializers=[axes])
    compare([node("ReduceLogSum", ["x", "axes"], keepdims=0)], {"x": _positive(3, 4, 2)},
            lambda x: torch.log(x.sum(1)), initializers=[axes])
    compare([node("CastLike", ["x", "f64"], ["d"]), node("Mul", ["d", "d"], ["dd"]), node("CastLike", ["dd", "x"])],
            {"x": x}, lambda x: (x.double() ** 2).float(), initializers=[const("f64", np.float64(0))])
