"""Resize, Einsum, PRelu, Mish and CastLike against float64 central differences; Reduce* nodes
whose axes are computed at run time; rules on values whose shapes inference cannot know; and
control flow (Loop, If) that a differentiated value reaches, which must raise, not train nothing."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import optim
from graphopt.autodiff import UnsupportedOperator, add_gradients, differentiable_initializers
from tests.gradcheck import D, _model, _run, check_gradients, node, r


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def constant_node(output, array):
    return helper.make_node("Constant", [], [output], value=numpy_helper.from_array(np.asarray(array)))


# -- PRelu, Mish, CastLike -----------------------------------------------------------------

@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (4, 5)])
def test_prelu(slope_shape):
    x = r(2, 3, 4, 5)
    x[np.abs(x) < 1e-2] = 0.3
    check_gradients([node("PRelu", ["x", "slope"])], {"x": x, "slope": r(*slope_shape)}, ["x", "slope"])


def test_mish():
    check_gradients([node("Mish", ["x"])], {"x": 3 * r(3, 4)}, ["x"])


def test_cast_like_casts_the_gradient_back_and_gives_the_target_none():
    nodes = [node("CastLike", ["x", "f32"], ["low"]), node("Mul", ["low", "low"], ["sq"]),
             node("CastLike", ["sq", "x"], ["y"])]
    check_gradients(nodes, {"x": r(3, 4)}, ["x"], initializers=[const("f32", np.float32(0))], eps=1e-2,
                    rtol=1e-4, atol=1e-5)  # a quadratic: central differences are exact but for float32 rounding


# -- Einsum --------------------------------------------------------------------------------

EINSUMS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 3, 4, 5)]),
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),
    ("ij,jk", [(2, 3), (3, 4)]),
    ("...ij,...jk", [(2, 3, 4), (2, 4, 3)]),
    ("i...,...->...", [(2, 3, 4), (1, 4)]),
    ("ij,kl->ijkl", [(1, 3), (2, 2)]),
    ("i j , j -> i", [(3, 4), (4,)]),
    ("bij,bjk,bkl->bil", [(2, 2, 3), (2, 3, 4), (2, 4, 2)]),
]


@pytest.mark.parametrize("equation, shapes", EINSUMS, ids=[e[0] for e in EINSUMS])
def test_einsum(equation, shapes):
    inputs = {f"x{i}": r(*shape) for i, shape in enumerate(shapes)}
    check_gradients([node("Einsum", list(inputs), equation=equation)], inputs, list(inputs))


def test_einsum_diagonal_raises_naming_the_node():
    model = _model([helper.make_node("Einsum", ["x"], ["y"], equation="ii->i", name="diag")], {"x": r(3, 3)}, "y")
    with pytest.raises(NotImplementedError, match=r"Einsum node 'diag'.*\['i'\] repeated .*'ii'"):
        add_gradients(model, "loss", ["x"])


# -- Resize --------------------------------------------------------------------------------

RESIZES = [
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2], (1, 2, 3, 4)),
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 2, 1.5], (1, 2, 3, 4)),
    ("nearest", "half_pixel", "round_prefer_ceil", [1, 1, 0.5, 3], (1, 2, 4, 3)),
    ("nearest", "align_corners", "ceil", [1, 1, 2, 2], (1, 1, 3, 4)),
    ("nearest", "asymmetric", "round_prefer_ceil", [1, 1, 2.5, 0.6], (1, 1, 3, 5)),
    ("nearest", "pytorch_half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.25], (1, 1, 4, 4)),
    ("linear", "half_pixel", None, [1, 1, 2, 2], (1, 2, 3, 4)),
    ("linear", "pytorch_half_pixel", None, [1, 1, 0.5, 3], (1, 2, 4, 3)),
    ("linear", "pytorch_half_pixel", None, [1, 1, 0.25, 1.5], (1, 1, 4, 2)),  # an output length of 1
    ("linear", "align_corners", None, [1, 1, 2, 2], (1, 2, 3, 4)),
    ("linear", "asymmetric", None, [1, 1, 1.5, 2, 2], (1, 1, 2, 3, 2)),
    ("linear", "half_pixel_symmetric", None, [1, 1, 1.7, 2.5], (1, 1, 3, 3)),
    ("linear", "align_corners", None, [2, 3], (3, 4)),
]


@pytest.mark.parametrize("mode, coordinates, rounding, scales, shape", RESIZES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{i}" for i, c in enumerate(RESIZES)])
def test_resize_by_scales(mode, coordinates, rounding, scales, shape):
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates}
    attrs |= {"nearest_mode": rounding} if rounding else {}
    check_gradients([node("Resize", ["x", "", "scales"], **attrs)], {"x": r(*shape)}, ["x"],
                    initializers=[const("scales", np.array(scales, np.float32))])


def test_resize_by_sizes_on_some_axes():
    check_gradients([node("Resize", ["x", "", "", "sizes"], mode="linear", axes=[2, 3],
                          coordinate_transformation_mode="align_corners")], {"x": r(1, 2, 3, 4)}, ["x"],
                    initializers=[const("sizes", np.array([5, 7], np.int64))])


def test_resize_by_sizes_computed_at_run_time():
    """torch's TorchScript exporter computes ``sizes`` as Concat(Shape(x)[:2], constant sizes)."""
    nodes = [node("Shape", ["x"], ["shape"], end=2), node("Concat", ["shape", "hw"], ["sizes"], axis=0),
             node("Resize", ["x", "", "", "sizes"], mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")]
    check_gradients(nodes, {"x": r(2, 2, 3, 4)}, ["x"], initializers=[const("hw", np.array([5, 7], np.int64))])


def _resize_model(shape, **attrs) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs),
         node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", D, shape)], [helper.make_tensor_value_info("loss", D, [])],
        initializer=[const("scales", np.array([1, 1, 2, 2], np.float32))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("attrs, message", [
    ({"mode": "cubic"}, "mode 'cubic'"), ({"mode": "linear", "antialias": 1}, "antialias=1"),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
     "coordinate_transformation_mode 'tf_crop_and_resize'"),
    ({"mode": "nearest", "exclude_outside": 1}, "exclude_outside=1"),
    ({"mode": "linear", "keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy 'not_larger'"),
])
def test_resize_unsupported_modes_raise_naming_the_node(attrs, message):
    with pytest.raises(NotImplementedError, match=rf"Resize node 'up': no gradient for {message}"):
        add_gradients(_resize_model([1, 1, 3, 3], **attrs), "loss", ["x"])


def test_resize_of_an_axis_of_unknown_length_raises_naming_the_node():
    with pytest.raises(NotImplementedError, match=r"Resize node 'up'.*static length of the resized axis 2"):
        add_gradients(_resize_model([1, 1, "h", 3], mode="linear"), "loss", ["x"])


# -- reductions over axes computed at run time ----------------------------------------------

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceLogSum"]

# nodes computing "axes": a Concat of Constants (folded when the graph is built), or at run time the last
# rank - 1 axes from x's shape
AXES = {
    "concat of constants": [constant_node("a0", np.array([0], np.int64)), constant_node("a1", np.array([-1], np.int64)),
                            node("Concat", ["a0", "a1"], ["axes"], axis=0)],
    "from the shape": [node("Shape", ["x"], ["shape"]), node("Size", ["shape"], ["rank"]),
                       constant_node("one", np.int64(1)), node("Range", ["one", "rank", "one"], ["axes"])],
}


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", list(AXES))
@pytest.mark.parametrize("op", REDUCTIONS)
def test_reduction_over_axes_computed_at_run_time(op, axes, keepdims):
    x = r(2, 3, 4, positive=op == "ReduceLogSum")
    x[np.abs(x) < 1e-2] = 0.3  # away from ReduceL1's kink
    check_gradients([*AXES[axes], node(op, ["x", "axes"], keepdims=keepdims)], {"x": x}, ["x"])


@pytest.mark.parametrize("noop", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceLogSumExp"])
def test_reduction_over_empty_axes_computed_at_run_time(op, keepdims, noop):
    """Empty axes reduce every axis, or none with noop_with_empty_axes."""
    nodes = [node("Shape", ["x"], ["shape"]), node("Size", ["shape"], ["rank"]),
             node("Range", ["rank", "rank", "one"], ["axes"]),
             node(op, ["x", "axes"], keepdims=keepdims, noop_with_empty_axes=noop)]
    check_gradients(nodes, {"x": r(2, 3)}, ["x"], initializers=[const("one", np.int64(1))])


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax"])
def test_noop_reduction_without_axes_is_the_identity(op):
    check_gradients([node(op, ["x"], keepdims=0, noop_with_empty_axes=1)], {"x": r(2, 3)}, ["x"])


# -- values whose shapes inference cannot know ----------------------------------------------

def _opaque_model(consumers: list, output: str = "m") -> onnx.ModelProto:
    """``u = test.opaque::Opaque(c)`` (of a shape inference cannot know; it runs as Identity),
    ``h = W * u``, the ``consumers`` of ``h``, and ``loss = sum(output ** 2)``."""
    nodes = [helper.make_node("Opaque", ["c"], ["u"], domain="test.opaque"), node("Mul", ["W", "u"], ["h"]),
             *consumers, node("Mul", [output, output], ["sq"]), node("ReduceSum", ["sq"], ["total"], keepdims=0),
             node("Reshape", ["total", "scalar"], ["loss"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("W", D, [5, 4])],
                              [helper.make_tensor_value_info("loss", D, [])],
                              initializer=[const("c", np.random.default_rng(3).standard_normal((5, 4))),
                                           const("ids", np.array([[0, 3], [3, 1]], np.int64)),
                                           const("axes", np.array([-1], np.int64)),
                                           const("scalar", np.array([], np.int64))])
    return helper.make_model(graph, ir_version=10,
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("test.opaque", 1)])


def _as_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its Opaque node replaced by the Identity it stands for, to run it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for n in model.graph.node:
        if n.domain == "test.opaque":
            n.op_type, n.domain = "Identity", ""
    return model


# consumers of h = W * u (u of unknown shape, W [5, 4]) computing m; their initializers
UNKNOWN_SHAPE_CONSUMERS = {
    "Gather, ReduceMean, ReduceMax over run-time axes": (
        [node("Gather", ["h", "ids"], ["e"]), node("ReduceMean", ["e", "axes"], ["mean"], keepdims=0),
         node("Shape", ["e"], ["shape"]), node("Size", ["shape"], ["rank"]), node("Sub", ["rank", "one"], ["last"]),
         node("Reshape", ["last", "flat"], ["runtime_axes"]),
         node("ReduceMax", ["e", "runtime_axes"], ["max"], keepdims=0), node("Add", ["mean", "max"], ["m"])],
        [const("one", np.int64(1)), const("flat", np.array([1], np.int64))]),
    "LayerNormalization, BatchNormalization, Softmax, broadcast Add": (
        [node("LayerNormalization", ["h", "scale", "bias"], ["n"], axis=-1), node("Softmax", ["n"], ["s"], axis=0),
         node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["bn"], training_mode=1),
         node("Add", ["s", "bias"], ["sb"]), node("Add", ["sb", "bn"], ["m"])],
        [const("scale", np.linspace(0.5, 2.0, 4)), const("bias", np.linspace(-1.0, 1.0, 4)),
         const("mean", np.zeros(4)), const("var", np.ones(4))]),
    "Concat, Split, Tile, Slice, GatherElements, Transpose": (
        [node("Concat", ["h", "h"], ["cat"], axis=-1), node("Split", ["cat"], ["p", "q"], axis=-1, num_outputs=2),
         node("Mul", ["p", "q"], ["pq"]), node("Tile", ["pq", "reps"], ["t"]),
         node("Slice", ["t", "starts", "ends"], ["sl"]), node("GatherElements", ["sl", "picks"], ["ge"], axis=-1),
         node("Transpose", ["ge"], ["m"], perm=[1, 0])],
        [const("reps", np.array([1, 2], np.int64)), const("starts", np.array([1, 1], np.int64)),
         const("ends", np.array([5, 7], np.int64)), const("picks", np.array([[0, 5], [4, 1], [2, 2]], np.int64))]),
}


@pytest.mark.parametrize("case", list(UNKNOWN_SHAPE_CONSUMERS))
def test_rules_on_values_of_unknown_shape(case):
    """Rules given ``h = W * u``, where shape inference knows nothing of ``u``, against central
    differences of the same graph (run with ``u``'s Opaque node as the Identity it stands for)."""
    consumers, initializers = UNKNOWN_SHAPE_CONSUMERS[case]
    model = _opaque_model(consumers)
    model.graph.initializer.extend(initializers)
    grad_model = _as_identity(add_gradients(model, "loss", ["W"]))
    forward = _as_identity(model)
    w = np.random.default_rng(4).standard_normal((5, 4))
    (_, analytic) = _run(grad_model, {"W": w})
    numeric, eps = np.zeros_like(w), 1e-6
    for index in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (_run(forward, {"W": up})[0] - _run(forward, {"W": down})[0]) / (2 * eps)
    # the loss is of the fourth degree in W: differences carry noise relative to its largest slope
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9 * np.abs(numeric).max())


@pytest.mark.parametrize("consumer, message", [
    (helper.make_node("Gather", ["h", "ids"], ["m"], axis=1, name="take"),
     r"Gather node 'take': the gradient needs the rank of its data 'h'"),
    (helper.make_node("MatMul", ["h", "h"], ["m"], name="square"),
     r"MatMul node 'square': the gradient needs the rank of its first operand 'h'"),
    (helper.make_node("Transpose", ["h"], ["m"], name="flip"),
     r"Transpose node 'flip': the gradient needs the rank of its input 'h'"),
])
def test_rules_that_need_a_rank_inference_could_not_find_name_the_node_and_value(consumer, message):
    with pytest.raises(NotImplementedError, match=message):
        add_gradients(_opaque_model([consumer]), "loss", ["W"])


# -- control flow --------------------------------------------------------------------------

def _loop_model(weight_as_carried: bool) -> onnx.ModelProto:
    """``loss = sum(v)`` after 3 iterations of ``v = v * W``, ``v`` starting at ``x``: ``W`` a loop-carried
    input (explicit) or read by the body from the enclosing scope (implicit)."""
    carried = ["w_in"] if weight_as_carried else []
    body = helper.make_graph(
        [node("Identity", ["cond"], ["cond_out"]), node("Mul", ["v_in", carried[0] if carried else "W"], ["v_out"]),
         *([node("Identity", ["w_in"], ["w_out"])] if carried else [])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", D, [3]),
         *[helper.make_tensor_value_info(n, D, [3]) for n in carried]],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", D, [3]),
         *([helper.make_tensor_value_info("w_out", D, [3])] if carried else [])])
    loop = helper.make_node("Loop", ["trips", "", "x", *(["W"] if carried else [])],
                            ["v", *(["w_final"] if carried else [])], body=body, name="repeat")
    graph = helper.make_graph([loop, node("ReduceSum", ["v"], ["loss"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", D, [3])],
                              [helper.make_tensor_value_info("loss", D, [])],
                              initializer=[const("trips", np.int64(3)), const("W", r(3))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("weight_as_carried", [False, True], ids=["implicit input", "loop-carried input"])
def test_a_weight_reaching_the_loss_through_a_loop_raises_for_explicit_and_default_wrt(weight_as_carried):
    model = _loop_model(weight_as_carried)
    for wrt in (["W"], None):
        with pytest.raises(UnsupportedOperator, match=r"Loop node 'repeat'.*\['W'\] reach the loss.*frozen="):
            add_gradients(model, "loss", wrt)
    with pytest.raises(UnsupportedOperator, match="Loop node 'repeat'"):
        differentiable_initializers(model, "loss")
    assert differentiable_initializers(model, "loss", frozen="W") == []
    assert [o.name for o in add_gradients(model, "loss", frozen="W").graph.output] == ["loss"]


def test_a_weight_read_by_an_if_branch_raises():
    then_branch = helper.make_graph([node("Mul", ["x", "W"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", D, [3])])
    else_branch = helper.make_graph([node("Identity", ["x"], ["f"])], "else", [],
                                    [helper.make_tensor_value_info("f", D, [3])])
    graph = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=then_branch,
                                                else_branch=else_branch, name="choose"),
                               node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", D, [3])],
                              [helper.make_tensor_value_info("loss", D, [])],
                              initializer=[const("flag", np.array(True)), const("W", r(3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(UnsupportedOperator, match=r"If node 'choose'.*\['W'\].*from the enclosing scope: \['W'\]"):
        add_gradients(model, "loss")


def _embedding_bag_model() -> onnx.ModelProto:
    """nn.EmbeddingBag (exported as a Loop whose body gathers from the weight) then a Linear."""
    torch = pytest.importorskip("torch")

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(10, 4, mode="mean")
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, ids, offsets):
            return (self.lin(self.bag(ids, offsets)) ** 2).sum()

    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Bag(), (torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 4])), buffer, dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=["ids", "offsets"], output_names=["loss"])
    return onnx.load_from_string(buffer.getvalue())


BATCH = {"ids": np.array([1, 2, 4, 5, 4, 3, 2, 9]), "offsets": np.array([0, 4])}


def test_embedding_bag_weight_is_not_silently_left_untrained_by_the_trainer():
    model = _embedding_bag_model()
    message = r"Loop node .*\['bag.weight'\] reach the loss through it, read by its body .*frozen="
    with pytest.raises(UnsupportedOperator, match=message):
        graphopt.Trainer(model, loss="loss", optimizer=optim.SGD(lr=0.1))
    trainer = graphopt.Trainer(model, loss="loss", optimizer=optim.SGD(lr=0.1), trainable=["bag.weight", "lin.*"])
    with pytest.raises(UnsupportedOperator, match=message):
        trainer.step(BATCH)
    frozen = graphopt.Trainer(model, loss="loss", optimizer=optim.SGD(lr=0.1), frozen="bag.weight")
    assert list(frozen.parameters) == ["lin.weight", "lin.bias"]
    before = frozen.parameters["lin.weight"].data.copy()
    frozen.step(BATCH)
    assert not np.allclose(frozen.parameters["lin.weight"].data, before)


def test_embedding_bag_weight_raises_in_add_gradients():
    model = _embedding_bag_model()
    for wrt in (["bag.weight"], None):
        with pytest.raises(UnsupportedOperator, match=r"Loop node .*\['bag.weight'\]"):
            add_gradients(model, "loss", wrt)
    outputs = [o.name for o in add_gradients(model, "loss", frozen="bag.weight").graph.output]
    assert outputs == ["loss", "lin.weight.grad", "lin.bias.grad"]


# -- the same rules in models exported from torch -------------------------------------------

@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_exported_resize_einsum_prelu_mish_match_torch_autograd(dynamo):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1, 2, 3, 4))
            self.a = torch.nn.Parameter(torch.randn(4, 5))
            self.act = torch.nn.PReLU(2, init=0.1)

        def forward(self, x):
            h = self.w * x
            up = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            corners = F.interpolate(h, scale_factor=(2, 1.5), mode="bilinear", align_corners=True)
            near = F.interpolate(h, size=(5, 7), mode="nearest")
            mixed = torch.einsum("bchw,wk->bchk", h, self.a)
            return (up * up).sum() + corners.mean() + (near * near).sum() + F.mish(mixed).sum() + \
                (self.act(mixed) ** 2).sum()

    torch.manual_seed(0)
    net, x = Net(), torch.randn(3, 2, 3, 4)
    with warnings.catch_warnings():  # a dynamic batch: the nearest Resize's sizes are computed from x's shape
        warnings.simplefilter("ignore")
        if dynamo:
            model = torch.onnx.export(net, (x,), dynamo=True, optimize=False, input_names=["x"], output_names=["loss"],
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}).model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(net, (x,), buffer, dynamo=False, do_constant_folding=False, input_names=["x"],
                              output_names=["loss"], dynamic_axes={"x": {0: "batch"}})
            model = onnx.load_from_string(buffer.getvalue())
    assert {"Resize", "Einsum", "PRelu"} <= {n.op_type for n in model.graph.node}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    grads = add_gradients(model, "loss")
    names = [o.name for o in grads.graph.output]
    results = dict(zip(names, _run(grads, {"x": x.numpy()})))
    net(x).backward()
    assert sorted(n[:-len(".grad")] for n in names[1:]) == sorted(name for name, _ in net.named_parameters())
    for name, parameter in net.named_parameters():
        np.testing.assert_allclose(results[f"{name}.grad"], parameter.grad.numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=name)


def test_torch_transformer_layer_in_a_wrapper_with_dynamic_axes_matches_torch_autograd():
    """The TorchScript export of a TransformerEncoderLayer behind an Embedding, with a dynamic batch
    and length, leaves the rank of the embedding table's Gather output unknown to shape inference."""
    torch = pytest.importorskip("torch")

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 16)
            self.enc = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.head = torch.nn.Linear(16, 1)

        def forward(self, ids):
            return self.head(self.enc(self.emb(ids))).mean()

    torch.manual_seed(0)
    net, ids = Wrapper(), torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        for parameter in net.parameters():  # distinct values: the exporter merges equal initializers
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (ids,), buffer, dynamo=False, do_constant_folding=False, input_names=["ids"],
                          output_names=["loss"], dynamic_axes={"ids": {0: "batch", 1: "length"}})
    grads = add_gradients(onnx.load_from_string(buffer.getvalue()), "loss")
    results = dict(zip([o.name for o in grads.graph.output], _run(grads, {"ids": ids.numpy()})))
    net(ids).backward()
    for name, parameter in net.named_parameters():
        np.testing.assert_allclose(results[f"{name}.grad"], parameter.grad.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
