"""The symbolic graph layer: eager dtype and shape errors, weak scalars, valid ONNX."""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphopt.symbolic import (
    IR_VERSION,
    OPSET,
    Graph,
    GraphBuildError,
    broadcast_shapes,
    clip,
    maximum,
    sqrt,
    sum_of_squares,
    where,
)


def _run(graph, **feeds):
    model = graph.to_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(graph.output_names, session.run(None, feeds)))


def test_dtype_mismatch_raises_at_the_building_line():
    g = Graph()
    x, y = g.input("x", np.float32, (3,)), g.input("y", np.float64, (3,))
    line = inspect.currentframe().f_lineno + 2
    with pytest.raises(GraphBuildError, match=rf"Add: operands have different dtypes.*test_symbolic.py:{line}\)"):
        x + y


def test_shape_mismatch_raises_at_the_building_line():
    g = Graph()
    x, y = g.input("x", np.float32, (2, 3)), g.input("y", np.float32, (4,))
    line = inspect.currentframe().f_lineno + 2
    with pytest.raises(GraphBuildError, match=rf"Mul: shapes \[\[2, 3\], \[4\]\] do not broadcast.*:{line}\)"):
        x * y


def test_where_needs_a_bool_condition():
    g = Graph()
    x = g.input("x", np.float32, (3,))
    with pytest.raises(GraphBuildError, match="condition must be bool"):
        where(x, x, 0.0)


def test_values_of_another_graph_are_refused():
    x = Graph().input("x", np.float32, (3,))
    y = Graph().input("y", np.float32, (3,))
    with pytest.raises(GraphBuildError, match="belongs to another graph"):
        x + y


def test_duplicate_names_are_refused():
    g = Graph()
    g.input("x", np.float32, (3,))
    with pytest.raises(GraphBuildError, match="already used"):
        g.input("x", np.float32, (3,))


@pytest.mark.parametrize("shapes, expected", [
    ([(3,), ()], (3,)), ([(2, 1), (1, 4)], (2, 4)), ([(5, 1, 3), (4, 1)], (5, 4, 3)), ([(None, 3), (3,)], (None, 3)),
])
def test_broadcast_shapes_follows_numpy(shapes, expected):
    assert broadcast_shapes("op", shapes) == expected
    concrete = [tuple(7 if d is None else d for d in s) for s in shapes]
    assert np.broadcast_shapes(*concrete) == tuple(7 if d is None else d for d in expected)


def test_weak_scalars_take_the_tensor_dtype_and_scalar_math_stays_float64():
    g = Graph()
    x = g.input("x", np.float32, (3,))
    beta = g.input("beta", np.float64, (), weak=True)
    t = g.input("t", np.float64, (), weak=True)
    correction = 1.0 - beta ** t
    assert correction.weak and correction.dtype == np.float64
    y = x / correction
    assert not y.weak and y.dtype == np.float32
    g.output("y", y)
    g.output("correction", correction)
    out = _run(g, x=np.array([1, 2, 3], np.float32), beta=np.array(0.999), t=np.array(3.0))
    expected = 1 - 0.999 ** 3
    assert out["correction"].dtype == np.float64 and out["correction"] == pytest.approx(expected, rel=1e-15)
    np.testing.assert_allclose(out["y"], np.float32([1, 2, 3]) / np.float32(expected), rtol=1e-7)


def test_functions_compute_what_numpy_does():
    g = Graph()
    x = g.input("x", np.float64, (2, 3))
    y = g.input("y", np.float64, (3,))
    g.output("sqrt", sqrt(x * x))
    g.output("max", maximum(x, y))
    g.output("where", where(x > 0.0, x, y))
    g.output("clip", clip(x, -0.5, 0.5))
    g.output("sumsq", sum_of_squares(x))
    g.output("pow", x ** 2.0)
    g.output("rsub", 1.0 - x)
    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((2, 3)), rng.standard_normal(3)
    out = _run(g, x=xv, y=yv)
    np.testing.assert_allclose(out["sqrt"], np.abs(xv))
    np.testing.assert_allclose(out["max"], np.maximum(xv, yv))
    np.testing.assert_allclose(out["where"], np.where(xv > 0, xv, yv))
    np.testing.assert_allclose(out["clip"], np.clip(xv, -0.5, 0.5))
    np.testing.assert_allclose(out["sumsq"], np.sum(xv ** 2))
    np.testing.assert_allclose(out["pow"], xv ** 2)
    np.testing.assert_allclose(out["rsub"], 1 - xv)


def test_model_is_pinned_checked_and_pruned():
    g = Graph()
    x = g.input("x", np.float32, (3,))
    unused = sqrt(x)  # noqa: F841 - a node no output needs is left out
    g.output("y", x + 1.0)
    g.output("x_again", x)  # an input as an output goes through Identity
    model = g.to_model()
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    assert model.opset_import[0].version == OPSET
    assert sorted(n.op_type for n in model.graph.node) == ["Add", "Identity"]
    out = _run(g, x=np.ones(3, np.float32))
    np.testing.assert_array_equal(out["y"], [2, 2, 2])
    np.testing.assert_array_equal(out["x_again"], [1, 1, 1])


def test_casts_and_constants_are_emitted_once():
    g = Graph()
    x = g.input("x", np.float32, (3,))
    lr = g.input("lr", np.float64, (), weak=True)
    g.output("a", x * lr + x * lr * 2.0 + x * 2.0)
    model = g.to_model()
    assert [n.op_type for n in model.graph.node].count("Cast") == 1
    assert len(model.graph.initializer) == 1  # one float32 constant 2.0


def test_lowered_graph_is_final():
    g = Graph()
    x = g.input("x", np.float32, (3,))
    g.output("y", x + 1.0)
    assert g.to_model() is g.to_model()
    with pytest.raises(GraphBuildError, match="already lowered"):
        x * 2.0


shape_strategy = st.lists(st.integers(1, 4), max_size=4).map(tuple)


@settings(max_examples=200, deadline=None)
@given(st.lists(shape_strategy, min_size=1, max_size=3))
def test_broadcast_shapes_agrees_with_numpy_property(shapes):
    try:
        expected = np.broadcast_shapes(*shapes)
    except ValueError:
        with pytest.raises(GraphBuildError, match="do not broadcast"):
            broadcast_shapes("op", shapes)
    else:
        assert broadcast_shapes("op", shapes) == expected


def _body_ops(model):
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    return [n.op_type for n in scan.attribute[0].g.node]


def _scan_model(fuse, formula):
    """Scan over rows of X and Y, with outer scalars b (weak) and t, emitting ``formula``."""
    g = Graph()
    big_x, big_y = g.input("X", np.float32, (None, 1, 8)), g.input("Y", np.float32, (None, 1, 8))
    b, t = g.input("b", np.float64, (), weak=True), g.input("t", np.float64, (), weak=True)
    body = g.subgraph("body", fuse=fuse)
    x, y = body.input("x", np.float32, (1, 8)), body.input("y", np.float32, (1, 8))
    body.output("out", formula(x, y, b, t))
    (out,) = g.scan(body, [big_x, big_y])
    g.output("OUT", out)
    return g.to_model()


def _adam_like(x, y, b, t):
    m = b * x + (1.0 - b) * y
    return y - 0.5 * -(m / (sqrt(y) / sqrt(1.0 - b ** t) + 1e-3) * (1.0 / (1.0 - b ** t)))


@pytest.mark.parametrize("fuse", [False, True])
def test_scan_body_hoists_scalar_math_and_matches_numpy(fuse):
    model = _scan_model(fuse, _adam_like)
    onnx.checker.check_model(model, full_check=True)
    outer = [n.op_type for n in model.graph.node]
    assert "Pow" in outer and outer.count("Pow") == 1  # b ** t: once, outside the body
    body = _body_ops(model)
    assert "Pow" not in body and "Cast" not in body
    if fuse:
        assert body == ["Mul", "Gemm", "Sqrt", "Gemm", "Div", "Gemm"]
    rng = np.random.default_rng(0)
    xv, yv = rng.random((5, 1, 8), np.float32), rng.random((5, 1, 8), np.float32) + 0.5
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"X": xv, "Y": yv, "b": np.array(0.9), "t": np.array(3.0)})
    x64, y64 = xv.astype(np.float64), yv.astype(np.float64)
    m = 0.9 * x64 + 0.1 * y64
    expected = y64 + 0.5 * (m / (np.sqrt(y64) / np.sqrt(1 - 0.9 ** 3) + 1e-3) / (1 - 0.9 ** 3))
    np.testing.assert_allclose(out, expected, rtol=2e-6)


def test_fusion_needs_rows_and_leaves_literal_graphs_alone():
    g = Graph(fuse=True)
    x, y = g.input("x", np.float32, (3, 4)), g.input("y", np.float32, (3, 4))
    s = g.input("s", np.float64, (), weak=True)
    g.output("z", s * x + y)  # not a [1, K] row: no Gemm, but still one Mul and one Add
    assert [n.op_type for n in g.to_model().graph.node] == ["Cast", "Mul", "Add"]
    literal = Graph()
    x = literal.input("x", np.float32, (1, 4))
    s = literal.input("s", np.float64, (), weak=True)
    literal.output("z", x / s * 2.0)
    assert [n.op_type for n in literal.to_model().graph.node] == ["Cast", "Div", "Mul"]


def test_identical_nodes_are_emitted_once():
    g = Graph()
    b, t = g.input("b", np.float64, (), weak=True), g.input("t", np.float64, (), weak=True)
    g.output("a", (1.0 - b ** t) * (1.0 - b ** t))
    assert [n.op_type for n in g.to_model().graph.node] == ["Pow", "Sub", "Mul"]


def test_body_values_cannot_leak_into_the_outer_graph():
    g = Graph()
    big_x = g.input("X", np.float32, (None, 4))
    body = g.subgraph("body")
    x = body.input("x", np.float32, (4,))
    with pytest.raises(GraphBuildError, match="belongs to another graph"):
        g.output("bad", x)
    body.output("y", x + 1.0)
    (y,) = g.scan(body, [big_x])
    with pytest.raises(GraphBuildError, match="already lowered"):
        x * 2.0
    with pytest.raises(GraphBuildError, match="does not stack rows"):
        _bad_scan(g, big_x)


def _bad_scan(g, big_x):
    body = g.subgraph("b2")
    body.output("z", body.input("x2", np.float32, (5,)) * 2.0)
    return g.scan(body, [big_x])
