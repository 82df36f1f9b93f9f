"""Gradient rules against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphopt.autodiff import UnsupportedOperator, add_gradients, supported
from tests.gradcheck import D, _model, _run, check_against_function, check_gradients, node, r

_CASES = np.random.default_rng(0)


def _case(*shape, positive=False):
    """Data of a case below, drawn at import from a generator of this module's own."""
    return r(*shape, positive=positive, generator=_CASES)


ELEMENTWISE = [
    ("Add", dict(a=_case(2, 3), b=_case(3))), ("Add", dict(a=_case(2, 1), b=_case(1, 3))),
    ("Sub", dict(a=_case(2, 3), b=_case(2, 1))),
    ("Mul", dict(a=_case(2, 3), b=_case(3))), ("Div", dict(a=_case(2, 3), b=_case(2, 3, positive=True))),
    ("Pow", dict(a=_case(2, 3, positive=True), b=_case(2, 3))),
]


@pytest.mark.parametrize("op, inputs", ELEMENTWISE, ids=[f"{o}-{i}" for i, (o, _) in enumerate(ELEMENTWISE)])
def test_binary(op, inputs):
    check_gradients([node(op, ["a", "b"])], inputs, ["a", "b"])


UNARY = [("Neg", {}), ("Identity", {}), ("Relu", {}), ("LeakyRelu", dict(alpha=0.2)), ("Tanh", {}), ("Sigmoid", {}),
         ("Exp", {}), ("Abs", {}), ("Softmax", dict(axis=1)), ("LogSoftmax", dict(axis=0)),
         ("Transpose", dict(perm=[2, 0, 1])), ("Flatten", dict(axis=1))]


@pytest.mark.parametrize("op, attrs", UNARY, ids=[u[0] for u in UNARY])
def test_unary(op, attrs):
    x = r(2, 3, 2)
    x[np.abs(x) < 1e-3] = 0.5  # keep kinks (Relu, Abs) away from the finite difference
    check_gradients([node(op, ["x"], **attrs)], dict(x=x), ["x"])


def test_erf_against_finite_differences_of_an_exact_erf():
    """ONNX Runtime has no float64 Erf and the reference evaluator's is accurate to ~1e-8 only,
    too coarse for central differences; they are taken on math.erf instead."""
    import math

    check_against_function([node("Erf", ["x"])], r(2, 3), np.vectorize(math.erf))


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_on_positive_inputs(op):
    check_gradients([node(op, ["x"])], dict(x=r(2, 3, positive=True)), ["x"])


def test_sum_of_three_broadcast_inputs():
    check_gradients([node("Sum", ["a", "b", "c"])], dict(a=r(2, 3), b=r(3), c=r(2, 1)), ["a", "b", "c"])


def test_where_and_cast():
    cond = numpy_helper.from_array(np.array([[True, False, True]]), "c")
    check_gradients([node("Where", ["c", "a", "b"], ["w"]), node("Cast", ["w"], to=D)],
                    dict(a=r(2, 3), b=r(3)), ["a", "b"], initializers=[cond])


@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                    ((1, 3, 4), (2, 4, 5))])
def test_matmul(shapes):
    check_gradients([node("MatMul", ["a", "b"])], dict(a=r(*shapes[0]), b=r(*shapes[1])), ["a", "b"])


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(trans_a, trans_b):
    a = r(4, 3) if trans_a else r(3, 4)
    b = r(2, 4) if trans_b else r(4, 2)
    check_gradients([node("Gemm", ["a", "b", "c"], alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)],
                    dict(a=a, b=b, c=r(2)), ["a", "b", "c"])


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("axes, keepdims", [([1], 0), ([0, 2], 1), (None, 0)])
def test_reductions(op, axes, keepdims):
    inputs = ["x"] if axes is None else ["x", "axes"]
    initializers = [] if axes is None else [numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    check_gradients([node(op, inputs, keepdims=keepdims)], dict(x=r(2, 3, 4)), ["x"], initializers=initializers)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_cum_sum(axis, exclusive, reverse):
    axis_input = numpy_helper.from_array(np.array(axis, np.int64), "axis")
    check_gradients([node("CumSum", ["x", "axis"], exclusive=exclusive, reverse=reverse)], dict(x=r(3, 4, 2)), ["x"],
                    initializers=[axis_input])


def test_cum_sum_along_an_axis_computed_at_run_time():
    """The axis is the rank minus one, from Shape and Size: not a constant."""
    nodes = [node("Shape", ["x"], ["s"]), node("Size", ["s"], ["n"]), node("Sub", ["n", "one"], ["last"]),
             node("CumSum", ["x", "last"], reverse=1)]
    check_gradients(nodes, dict(x=r(2, 5)), ["x"], initializers=[numpy_helper.from_array(np.array(1, np.int64), "one")])


def test_reshape_squeeze_unsqueeze():
    shape = numpy_helper.from_array(np.array([3, 4], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    check_gradients([node("Reshape", ["x", "shape"], ["a"]), node("Unsqueeze", ["a", "axes"], ["b"]),
                     node("Squeeze", ["b", "axes"])], dict(x=r(2, 6)), ["x"], initializers=[shape, axes])


def test_mlp_with_shared_weights_and_softmax():
    """A two-layer MLP whose first weight is used twice, ending in log-softmax."""
    nodes = [node("MatMul", ["x", "w1"], ["h0"]), node("Add", ["h0", "b1"], ["h1"]), node("Tanh", ["h1"], ["h2"]),
             node("MatMul", ["h2", "w1t"], ["h3"]), node("MatMul", ["h2", "w2"], ["h4"]), node("Relu", ["h3"], ["h5"]),
             node("MatMul", ["h5", "w1"], ["h6"]), node("Add", ["h4", "h6"], ["h7"]),
             node("LogSoftmax", ["h7"], axis=-1)]
    inputs = dict(x=r(4, 3), w1=r(3, 3), w1t=r(3, 3), b1=r(3), w2=r(3, 3))
    check_gradients(nodes, inputs, ["w1", "b1", "w2", "x"])


def _at(sequence, position, output):
    return [node("Constant", [], [f"{output}/p"], value=numpy_helper.from_array(np.array(position, np.int64))),
            node("SequenceAt", [sequence, f"{output}/p"], [output])]


@pytest.mark.parametrize("split, pieces", [([2, 3], [1, 0]), (2, [2, -3, 1])])
def test_split_to_sequence_read_at_constant_positions(split, pieces):
    """torch's dynamo exporter writes chunk and split so: lengths given, or one length (the last piece shorter)."""
    nodes = [node("SplitToSequence", ["x", "split"], ["s"], axis=1)]
    for i, position in enumerate(pieces):
        nodes += _at("s", position, f"p{i}")
    nodes.append(node("Concat", [f"p{i}" for i in range(len(pieces))], axis=1))
    split_input = numpy_helper.from_array(np.array(split, np.int64), "split")
    check_gradients(nodes, dict(x=r(3, 5)), ["x"], initializers=[split_input])


def test_split_to_sequence_into_single_slices_without_the_axis():
    nodes = [node("SplitToSequence", ["x"], ["s"], axis=0, keepdims=0), *_at("s", 0, "a"), *_at("s", 2, "b"),
             node("Mul", ["a", "b"])]
    check_gradients(nodes, dict(x=r(3, 4)), ["x"])


def test_a_sequence_read_at_a_position_computed_at_run_time_is_unsupported():
    nodes = [node("SplitToSequence", ["x"], ["s"], axis=0), node("Shape", ["x"], ["n"], start=0, end=1),
             node("Squeeze", ["n"], ["m"]), node("Sub", ["m", "one"], ["last"]), node("SequenceAt", ["s", "last"])]
    model = _model(nodes, {"x": r(3, 4)}, "y", [numpy_helper.from_array(np.array(1, np.int64), "one")])
    with pytest.raises(UnsupportedOperator, match="SequenceAt"):
        add_gradients(model, "loss", ["x"])


def test_symbolic_batch_dimension_is_handled():
    """Shapes only known at run time (a symbolic batch) still reduce the bias gradient correctly."""
    graph = helper.make_graph(
        [node("Add", ["x", "b"], ["y"]), node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", D, ["batch", 3])], [helper.make_tensor_value_info("loss", D, [])],
        initializer=[numpy_helper.from_array(np.zeros(3), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    grads = add_gradients(model, "loss", ["b"])
    (_, gb) = _run(grads, {"x": r(5, 3)})
    np.testing.assert_allclose(gb, [5.0, 5.0, 5.0])


def test_unsupported_operator_is_named():
    graph = helper.make_graph([node("Acos", ["x"], ["c"]), node("ReduceSum", ["c"], ["loss"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", D, [3])],
                              [helper.make_tensor_value_info("loss", D, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(UnsupportedOperator, match=r"ai.onnx::Acos .*supported: .*MatMul"):
        add_gradients(model, "loss", ["x"])


def test_bad_loss_and_wrt_are_named():
    graph = helper.make_graph([node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", D, [3])],
                              [helper.make_tensor_value_info("y", D, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(ValueError, match="loss 'y' must be a float scalar"):
        add_gradients(model, "y", ["x"])
    with pytest.raises(ValueError, match="loss 'nope' is not a value"):
        add_gradients(model, "nope", ["x"])


def test_rules_cover_the_operators_this_module_promises():
    assert {"MatMul", "Gemm", "Add", "Softmax", "LogSoftmax", "ReduceMean", "Transpose", "Erf"} <= set(supported())


def test_default_wrt_is_every_float_initializer_less_frozen(tmp_path):
    graph = helper.make_graph([node("MatMul", ["x", "W"], ["h"]), node("Add", ["h", "b"], ["y"]),
                               node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", D, [2, 3])],
                              [helper.make_tensor_value_info("loss", D, [])],
                              initializer=[numpy_helper.from_array(np.ones((3, 4)), "W"),
                                           numpy_helper.from_array(np.zeros(4), "b")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    outputs = [o.name for o in add_gradients(str(path), "loss").graph.output]
    assert outputs == ["loss", "W.grad", "b.grad"]
    assert [o.name for o in add_gradients(str(path), "loss", frozen="b").graph.output] == ["loss", "W.grad"]
    assert [o.name for o in add_gradients(str(path), "loss", ["x", "b*"]).graph.output] == ["loss", "x.grad", "b.grad"]
    with pytest.raises(ValueError, match="wrt: 'nope' matches none of the candidate float initializers"):
        add_gradients(str(path), "loss", ["nope"])


def test_model_local_functions_are_inlined():
    """Exporters (torch's dynamo exporter among them) wrap modules in model-local functions."""
    layer = helper.make_function("local", "Dense", ["x", "w"], ["y"],
                                 [node("MatMul", ["x", "w"], ["h"]), node("Tanh", ["h"], ["y"])],
                                 opset_imports=[helper.make_opsetid("", 21)])
    graph = helper.make_graph([helper.make_node("Dense", ["x", "W"], ["y"], domain="local"),
                               node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", D, [2, 3])],
                              [helper.make_tensor_value_info("loss", D, [])],
                              initializer=[numpy_helper.from_array(r(3, 4), "W")])
    model = helper.make_model(graph, functions=[layer], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)])
    x, w = r(2, 3), numpy_helper.to_array(graph.initializer[0])
    (_, grad) = _run(add_gradients(model, "loss"), {"x": x})
    np.testing.assert_allclose(grad, x.T @ (1 - np.tanh(x @ w) ** 2), rtol=1e-12, atol=1e-14)
