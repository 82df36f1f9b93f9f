"""`graphopt.lower_preview_training`: ONNX's ai.onnx.preview.training operators on plain onnxruntime.

References, never the code under test: ONNX's own node test cases for Adagrad, Adam, Momentum and
Nesterov momentum (their expected outputs come from the spec's pseudo code in onnx's test
generators, `onnx/backend/test/case/node/{adagrad,adam,momentum}.py`, which write
`onnx/backend/test/data/node/test_*`; this onnx wheel ships the generators but not that folder),
ONNX's shipped Gradient model tests (`data/simple/test_gradient_of_add*`), `onnx.reference`'s
ReferenceEvaluator run on the original, un-lowered model, and hand-derived derivatives.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import graphopt
from graphopt import PreviewTrainingError, lower_preview_training

PREVIEW = "ai.onnx.preview.training"
IMPORTS = [helper.make_opsetid("", graphopt.OPSET), helper.make_opsetid(PREVIEW, 1)]
ONNX_TESTS = os.path.join(os.path.dirname(onnx.__file__), "backend", "test")
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
TOLERANCES = {np.float32: (2e-5, 1e-6), np.float64: (1e-12, 1e-14)}  # (rtol, atol)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check_lowered(original: onnx.ModelProto, lowered: onnx.ModelProto) -> None:
    """Same inputs and outputs, standard operators only (in subgraphs too), pinned opset and IR version."""
    assert [(i.name, i.type) for i in lowered.graph.input] == [(i.name, i.type) for i in original.graph.input]
    assert [o.name for o in lowered.graph.output] == [o.name for o in original.graph.output]
    assert {(o.domain, o.version) for o in lowered.opset_import} == {("", graphopt.OPSET)}
    assert lowered.ir_version == graphopt.IR_VERSION

    def domains(graph):
        for node in graph.node:
            yield node.domain
            for attribute in node.attribute:
                for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    yield from domains(subgraph)
    assert set(domains(lowered.graph)) <= {"", "ai.onnx"}


# -- ONNX's own node test cases -------------------------------------------------------------------

ONNX_NODE_TESTS = ["test_adagrad", "test_adagrad_multiple", "test_adam", "test_adam_multiple", "test_momentum",
                   "test_momentum_multiple", "test_nesterov_momentum"]


def _load_test_folder(folder: str) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    """An onnx backend test folder: ``model.onnx`` and ``test_data_set_0/{input,output}_<k>.pb``."""
    model = onnx.load(os.path.join(folder, "model.onnx"))

    def tensors(kind: str, count: int) -> list[np.ndarray]:
        return [numpy_helper.to_array(onnx.load_tensor(os.path.join(folder, "test_data_set_0", f"{kind}_{k}.pb")))
                for k in range(count)]
    return model, tensors("input", len(model.graph.input)), tensors("output", len(model.graph.output))


def _onnx_node_case(name: str) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    """ONNX's node test case ``name``: from ``onnx/backend/test/data/node/<name>`` where the installed
    onnx ships that folder, else as onnx's generator writes it there (importing a case module runs
    its exports, each of which registers a TestCase: the model and its data set)."""
    folder = os.path.join(ONNX_TESTS, "data", "node", name)
    if os.path.isdir(folder):
        return _load_test_folder(folder)
    import onnx.backend.test.case.node as node_cases
    from onnx.backend.test.case.node import adagrad, adam, momentum  # noqa: F401 - registers the cases
    (case,) = [case for case in node_cases._NodeTestCases if case.name == name]
    inputs, outputs = case.data_sets[0]
    return case.model, list(inputs), list(outputs)


def _check_test_case(model: onnx.ModelProto, inputs: list[np.ndarray], expected: list[np.ndarray]) -> None:
    given = model.SerializeToString()
    lowered = lower_preview_training(model)
    assert model.SerializeToString() == given  # the given model is left as it was
    _check_lowered(model, lowered)
    got = _run(lowered, {i.name: v for i, v in zip(model.graph.input, inputs, strict=True)})
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ONNX_NODE_TESTS)
def test_onnx_node_test_cases(name):
    _check_test_case(*_onnx_node_case(name))


@pytest.mark.parametrize("name", ["test_gradient_of_add", "test_gradient_of_add_and_mul"])
def test_onnx_gradient_model_tests(name):
    _check_test_case(*_load_test_folder(os.path.join(ONNX_TESTS, "data", "simple", name)))


# -- random multi-tensor nodes against onnx's reference evaluator ----------------------------------

# per op: the variadic input groups and output groups, in the spec's order
GROUPS = {"Adagrad": (("X", "G", "H"), ("X_new", "H_new")), "Momentum": (("X", "G", "V"), ("X_new", "V_new")),
          "Adam": (("X", "G", "V", "H"), ("X_new", "V_new", "H_new"))}


def optimizer_model(op: str, shapes, dtype, attributes: dict, r_dtype=None, name="opt") -> onnx.ModelProto:
    """One ``op`` node updating tensors of ``shapes`` (inputs R, T, X1..Xn, G1..Gn, states)."""
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    r_element = helper.np_dtype_to_tensor_dtype(np.dtype(r_dtype or dtype))
    ins, outs = GROUPS[op]
    n = len(shapes)
    inputs = ["R", "T", *(f"{k}{i}" for k in ins for i in range(n))]
    outputs = [f"{k}{i}" for k in outs for i in range(n)]
    node = helper.make_node(op, inputs, outputs, name=name, domain=PREVIEW, **attributes)
    graph = helper.make_graph(
        [node], "preview",
        [helper.make_tensor_value_info("R", r_element, []), helper.make_tensor_value_info("T", TensorProto.INT64, []),
         *(helper.make_tensor_value_info(f"{k}{i}", element, shapes[i]) for k in ins for i in range(n))],
        [helper.make_tensor_value_info(f"{k}{i}", element, shapes[i]) for k in outs for i in range(n)])
    return helper.make_model(graph, opset_imports=IMPORTS, ir_version=graphopt.IR_VERSION)


def random_feeds(op: str, shapes, dtype, r: float, t: int, seed: int, r_dtype=None) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {"R": np.array(r, r_dtype or dtype), "T": np.array(t, np.int64)}
    for k in GROUPS[op][0]:
        for i, shape in enumerate(shapes):
            value = rng.standard_normal(shape)
            feeds[f"{k}{i}"] = np.asarray(np.abs(value) if k == "H" else value, dtype)  # H: accumulated squares
    return feeds


def f32(value: float) -> float:
    """An attribute's value as the model holds it (a float32), in float64."""
    return float(np.float32(value))


def spec_update(op: str, attributes: dict, r, t, *tensors) -> list[np.ndarray]:
    """One tensor's update by the spec's pseudo code (onnx/defs/training/defs.cc), in float64, with
    the spec's attribute defaults."""
    r, t = float(r), int(t)
    x, g, *states = (np.asarray(v, np.float64) for v in tensors)
    a = {k: f32(v) for k, v in attributes.items() if k != "mode"}
    g = a.get("norm_coefficient", 0.0) * x + g
    if op == "Adagrad":
        (h,) = states
        rate = r / (1 + t * a.get("decay_factor", 0.0))
        h_new = h + g * g
        return [x - rate * g / (np.sqrt(h_new) + a.get("epsilon", 1e-6)), h_new]
    if op == "Momentum":
        (v,) = states
        v_new = a["alpha"] * v + (a["beta"] if t > 0 else 1.0) * g
        direction = v_new if attributes["mode"] == "standard" else g + a["alpha"] * v_new
        return [x - r * direction, v_new]
    v, h = states
    alpha, beta = a.get("alpha", f32(0.9)), a.get("beta", f32(0.999))
    v_new = alpha * v + (1 - alpha) * g
    h_new = beta * h + (1 - beta) * g * g
    rate = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
    x_new = x - rate * v_new / (np.sqrt(h_new) + a.get("epsilon", 1e-6))
    return [(1 - a.get("norm_coefficient_post", 0.0)) * x_new, v_new, h_new]


def check_against_spec_and_reference(model: onnx.ModelProto, feeds: dict, dtype) -> None:
    """The lowered model's outputs against the spec's pseudo code in float64 (tolerance by dtype), and
    against onnx.reference on the original model. The reference computes ``1 - alpha`` and the like
    from float32 attributes in float32 and rounds its multi-tensor Adam's outputs to float32
    (`op_adam.py`), so it is compared at float32's tolerance whatever the dtype."""
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    got = _run(lowered, feeds)
    node = model.graph.node[0]
    ins, outs = GROUPS[node.op_type]
    n = (len(node.input) - 2) // len(ins)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attributes = {k: v.decode() if isinstance(v, bytes) else v for k, v in attributes.items()}
    updates = [spec_update(node.op_type, attributes, feeds["R"], feeds["T"], *(feeds[f"{k}{i}"] for k in ins))
               for i in range(n)]
    spec = [updates[i][j] for j in range(len(outs)) for i in range(n)]
    onnx_reference = ReferenceEvaluator(model).run(None, feeds)
    rtol, atol = TOLERANCES[dtype]
    for output, g, e, e_ref in zip(model.graph.output, got, spec, onnx_reference, strict=True):
        assert g.dtype == dtype and g.shape == e.shape, output.name
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=output.name)
        np.testing.assert_allclose(g, e_ref, rtol=TOLERANCES[np.float32][0], atol=TOLERANCES[np.float32][1],
                                   err_msg=output.name)


shapes_strategy = st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=4)
dtypes = st.sampled_from([np.float32, np.float64])
steps = st.sampled_from([0, 1, 2, 7])
rates = st.sampled_from([1e-3, 0.05, 0.5])
norms = st.sampled_from([0.0, 1e-3, 0.1])


@PROPERTY
@given(shapes=shapes_strategy, dtype=dtypes, t=steps, r=rates, seed=st.integers(0, 2**16),
       attributes=st.fixed_dictionaries({}, optional={
           "decay_factor": st.sampled_from([0.0, 0.1, 1.5]), "epsilon": st.sampled_from([1e-8, 1e-6, 1e-2]),
           "norm_coefficient": norms}))
def test_adagrad(shapes, dtype, t, r, seed, attributes):
    model = optimizer_model("Adagrad", shapes, dtype, attributes)
    check_against_spec_and_reference(model, random_feeds("Adagrad", shapes, dtype, r, t, seed), dtype)


@PROPERTY
@given(shapes=shapes_strategy, dtype=dtypes, t=steps, r=rates, seed=st.integers(0, 2**16),
       attributes=st.fixed_dictionaries({
           "alpha": st.sampled_from([0.0, 0.5, 0.9, 0.95]), "beta": st.sampled_from([0.1, 0.9, 1.0]),
           "mode": st.sampled_from(["standard", "nesterov"]), "norm_coefficient": norms}))
def test_momentum(shapes, dtype, t, r, seed, attributes):
    model = optimizer_model("Momentum", shapes, dtype, attributes)
    check_against_spec_and_reference(model, random_feeds("Momentum", shapes, dtype, r, t, seed), dtype)


@PROPERTY
@given(shapes=shapes_strategy, dtype=dtypes, t=steps, r=rates, seed=st.integers(0, 2**16),
       attributes=st.fixed_dictionaries({}, optional={
           "alpha": st.sampled_from([0.0, 0.5, 0.9]), "beta": st.sampled_from([0.5, 0.999]),
           "epsilon": st.sampled_from([1e-8, 1e-6, 1e-2]), "norm_coefficient": norms,
           "norm_coefficient_post": st.sampled_from([0.0, 0.01, 0.2])}))
def test_adam(shapes, dtype, t, r, seed, attributes):
    model = optimizer_model("Adam", shapes, dtype, attributes)
    check_against_spec_and_reference(model, random_feeds("Adam", shapes, dtype, r, t, seed), dtype)


@pytest.mark.parametrize("op", sorted(GROUPS))
def test_float_learning_rate_for_double_tensors(op):
    """R and the tensors may differ in dtype (T1 and T3 in the schema); the outputs keep the tensors'."""
    attributes = {"alpha": 0.9, "beta": 0.5, "mode": "nesterov", "norm_coefficient": 0.01} if op == "Momentum" else {}
    shapes = [(3,), (2, 2)]
    model = optimizer_model(op, shapes, np.float64, attributes, r_dtype=np.float32)
    feeds = random_feeds(op, shapes, np.float64, 0.125, 3, seed=1, r_dtype=np.float32)  # 0.125: exact in float32
    check_against_spec_and_reference(model, feeds, np.float64)


def test_adam_bias_correction_by_hand():
    """One tensor, T = 2, alpha 0.5, beta 0.75: R_adjusted = R sqrt(1 - 0.75^2) / (1 - 0.5^2), by hand."""
    model = optimizer_model("Adam", [(1,)], np.float64, {"alpha": 0.5, "beta": 0.75, "epsilon": 0.0})
    x, g, v, h = 1.0, 2.0, 0.0, 0.0
    got = _run(lower_preview_training(model), {"R": np.array(0.1), "T": np.array(2, np.int64), "X0": np.array([x]),
                                                "G0": np.array([g]), "V0": np.array([v]), "H0": np.array([h])})
    v_new, h_new = 0.5 * g, 0.25 * g * g  # 1.0, 1.0
    x_new = x - 0.1 * np.sqrt(1 - 0.75 ** 2) / (1 - 0.5 ** 2) * v_new / np.sqrt(h_new)
    np.testing.assert_allclose(got, [[x_new], [v_new], [h_new]], rtol=1e-15)


# -- nodes inside subgraphs -------------------------------------------------------------------------

def test_momentum_in_a_loop_body_takes_the_iteration_as_t():
    """A Loop of 4 Nesterov steps, T = the iteration number (0 first: beta_adjusted = 1)."""
    momentum = helper.make_node("Momentum", ["R", "i", "x", "G", "v"], ["x_out", "v_out"], name="inner",
                                domain=PREVIEW, alpha=0.9, beta=0.5, mode="nesterov", norm_coefficient=0.01)
    body = helper.make_graph(
        [momentum, helper.make_node("Identity", ["cond"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [3])])
    loop = helper.make_node("Loop", ["N", "go", "X", "V"], ["X_new", "V_new"], body=body)
    graph = helper.make_graph(
        [loop], "loop",
        [helper.make_tensor_value_info("N", TensorProto.INT64, []),
         helper.make_tensor_value_info("go", TensorProto.BOOL, []),
         helper.make_tensor_value_info("R", TensorProto.FLOAT, []),
         *(helper.make_tensor_value_info(k, TensorProto.FLOAT, [3]) for k in ("X", "G", "V"))],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [3]) for k in ("X_new", "V_new")])
    model = helper.make_model(graph, opset_imports=IMPORTS, ir_version=graphopt.IR_VERSION)
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    rng = np.random.default_rng(0)
    feeds = {"N": np.array(4, np.int64), "go": np.array(True), "R": np.array(0.1, np.float32),
             **{k: rng.standard_normal(3).astype(np.float32) for k in ("X", "G", "V")}}
    x, v = feeds["X"].astype(np.float64), feeds["V"].astype(np.float64)
    for t in range(4):  # the spec's pseudo code, in float64
        g = 0.01 * x + feeds["G"]
        v = 0.9 * v + (0.5 if t > 0 else 1.0) * g
        x = x - 0.1 * (g + 0.9 * v)
    got = _run(lowered, feeds)
    np.testing.assert_allclose(got[0], x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, feeds), rtol=1e-5, atol=1e-6)


def test_adam_in_an_if_branch():
    adam = helper.make_node("Adam", ["R", "T", "X", "G", "V", "H"], ["x1", "v1", "h1"], name="inner",
                            domain=PREVIEW, norm_coefficient_post=0.1)
    then = helper.make_graph([adam], "then", [], [helper.make_tensor_value_info(k, TensorProto.FLOAT, [2])
                                                  for k in ("x1", "v1", "h1")])
    otherwise = helper.make_graph([helper.make_node("Identity", [k], [k.lower() + "2"]) for k in ("X", "V", "H")],
                                  "else", [], [helper.make_tensor_value_info(k, TensorProto.FLOAT, [2])
                                               for k in ("x2", "v2", "h2")])
    branch = helper.make_node("If", ["C"], ["X_new", "V_new", "H_new"], then_branch=then, else_branch=otherwise)
    graph = helper.make_graph(
        [branch], "if",
        [helper.make_tensor_value_info("C", TensorProto.BOOL, []),
         helper.make_tensor_value_info("R", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("T", TensorProto.INT64, []),
         *(helper.make_tensor_value_info(k, TensorProto.FLOAT, [2]) for k in ("X", "G", "V", "H"))],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [2]) for k in ("X_new", "V_new", "H_new")])
    model = helper.make_model(graph, opset_imports=IMPORTS, ir_version=graphopt.IR_VERSION)
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    for condition in (True, False):
        feeds = {"C": np.array(condition), "R": np.array(0.01, np.float32), "T": np.array(3, np.int64),
                 **dict(zip("XGVH", np.abs(np.random.default_rng(1).standard_normal((4, 2))).astype(np.float32)))}
        np.testing.assert_allclose(_run(lowered, feeds), ReferenceEvaluator(model).run(None, feeds),
                                   rtol=2e-5, atol=1e-6)


# -- Gradient through graphopt's reverse pass --------------------------------------------------------

def gradient_model(gradient_inputs=("W", "X"), y_op="ReduceSum") -> onnx.ModelProto:
    """y = ReduceSum(Tanh(X @ W) * Z); Gradient(xs=[W], zs=[X], y) at the values of ``gradient_inputs``."""
    nodes = [helper.make_node("MatMul", ["X", "W"], ["A"]), helper.make_node("Tanh", ["A"], ["B"]),
             helper.make_node("Mul", ["B", "Z"], ["C"]),
             helper.make_node(y_op, ["C"], ["y"], keepdims=0) if y_op else helper.make_node("Identity", ["C"], ["y"]),
             helper.make_node("Gradient", list(gradient_inputs), ["dy_dW"], name="grad", domain=PREVIEW,
                              xs=["W"], zs=["X"], y="y")]
    inputs = [("X", [2, 3]), ("W", [3, 4]), ("Z", [2, 4]), ("W1", [3, 4]), ("X1", [2, 3])]
    graph = helper.make_graph(nodes, "gradient",
                              [helper.make_tensor_value_info(k, TensorProto.DOUBLE, s) for k, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [] if y_op else [2, 4]),
                               helper.make_tensor_value_info("dy_dW", TensorProto.DOUBLE, [3, 4])])
    return helper.make_model(graph, opset_imports=IMPORTS, ir_version=graphopt.IR_VERSION)


@pytest.mark.parametrize("at", [("W", "X"), ("W1", "X1")])
def test_gradient_node_by_hand(at):
    """dy/dW = X^T ((1 - tanh(X W)^2) * Z), at the Gradient node's inputs (W1, X1: another point)."""
    model = gradient_model(at)
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    rng = np.random.default_rng(2)
    feeds = {k: rng.standard_normal(s) for k, s in [("X", (2, 3)), ("W", (3, 4)), ("Z", (2, 4)),
                                                    ("W1", (3, 4)), ("X1", (2, 3))]}
    w, x = feeds[at[0]], feeds[at[1]]
    expected = x.T @ ((1 - np.tanh(x @ w) ** 2) * feeds["Z"])
    y, dy_dw = _run(lowered, feeds)
    np.testing.assert_allclose(y, np.sum(np.tanh(feeds["X"] @ feeds["W"]) * feeds["Z"]), rtol=1e-12)
    np.testing.assert_allclose(dy_dw, expected, rtol=1e-12, atol=1e-14)


def test_gradient_with_respect_to_an_intermediate_tensor():
    """xs = [A], A = X @ W computed in the graph; Z an initializer: dy/dA = (1 - tanh(A)^2) * Z."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2, 4))
    nodes = [helper.make_node("MatMul", ["X", "W"], ["A"]), helper.make_node("Tanh", ["A"], ["B"]),
             helper.make_node("Mul", ["B", "Z"], ["C"]), helper.make_node("ReduceSum", ["C"], ["y"], keepdims=0),
             helper.make_node("Gradient", ["A"], ["dy_dA"], name="grad", domain=PREVIEW, xs=["A"], y="y")]
    graph = helper.make_graph(nodes, "intermediate",
                              [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [2, 3]),
                               helper.make_tensor_value_info("W", TensorProto.DOUBLE, [3, 4])],
                              [helper.make_tensor_value_info("dy_dA", TensorProto.DOUBLE, [2, 4])],
                              [numpy_helper.from_array(z, "Z")])
    model = helper.make_model(graph, opset_imports=IMPORTS, ir_version=graphopt.IR_VERSION)
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    x, w = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    (got,) = _run(lowered, {"X": x, "W": w})
    np.testing.assert_allclose(got, (1 - np.tanh(x @ w) ** 2) * z, rtol=1e-12, atol=1e-14)


def test_gradient_feeding_adam_is_a_training_step():
    """The preview domain's training pattern: Gradient's dy/dW is Adam's G. Checked against the
    hand-derived gradient and the spec's Adam pseudo code."""
    model = gradient_model()
    attributes = {"alpha": 0.8, "beta": 0.9, "norm_coefficient": 0.01}
    model.graph.node.append(helper.make_node("Adam", ["R", "T", "W", "dy_dW", "V", "H"], ["W_new", "V_new", "H_new"],
                                             name="adam", domain=PREVIEW, **attributes))
    model.graph.input.extend([helper.make_tensor_value_info("R", TensorProto.DOUBLE, []),
                              helper.make_tensor_value_info("T", TensorProto.INT64, []),
                              *(helper.make_tensor_value_info(k, TensorProto.DOUBLE, [3, 4]) for k in "VH")])
    model.graph.output.extend([helper.make_tensor_value_info(k, TensorProto.DOUBLE, [3, 4])
                               for k in ("W_new", "V_new", "H_new")])
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    rng = np.random.default_rng(4)
    feeds = {k: rng.standard_normal(s) for k, s in [("X", (2, 3)), ("W", (3, 4)), ("Z", (2, 4)), ("W1", (3, 4)),
                                                    ("X1", (2, 3)), ("V", (3, 4)), ("H", (3, 4))]}
    feeds.update(H=np.abs(feeds["H"]), R=np.array(0.05), T=np.array(3, np.int64))
    grad = feeds["X"].T @ ((1 - np.tanh(feeds["X"] @ feeds["W"]) ** 2) * feeds["Z"])
    expected = spec_update("Adam", attributes, feeds["R"], feeds["T"], feeds["W"], grad, feeds["V"], feeds["H"])
    got = _run(lowered, feeds)
    np.testing.assert_allclose(got[1], grad, rtol=1e-12, atol=1e-14)
    for g, e in zip(got[2:], expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def test_gradient_of_a_tensor_is_an_error():
    with pytest.raises(PreviewTrainingError, match=r"Gradient node 'grad'.*float scalar"):
        lower_preview_training(gradient_model(y_op=None))


def test_gradient_without_a_rule_is_an_error():
    model = gradient_model()
    model.graph.node[1].op_type = "Atan"
    with pytest.raises(PreviewTrainingError, match=r"Gradient node 'grad'.*Atan"):
        lower_preview_training(model)


def test_gradient_in_a_subgraph_is_an_error():
    gradient = helper.make_node("Gradient", ["a"], ["da"], name="inner_grad", domain=PREVIEW, xs=["a"], y="a")
    then = helper.make_graph([gradient], "then", [], [helper.make_tensor_value_info("da", TensorProto.FLOAT, [])])
    otherwise = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "else", [],
                                  [helper.make_tensor_value_info("b", TensorProto.FLOAT, [])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=otherwise)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=IMPORTS, ir_version=graphopt.IR_VERSION)
    with pytest.raises(PreviewTrainingError, match=r"Gradient node 'inner_grad'.*subgraph"):
        lower_preview_training(model)


# -- errors and models without preview nodes -------------------------------------------------------

def _edited(op: str, edit) -> onnx.ModelProto:
    attributes = {"alpha": 0.9, "beta": 0.5, "mode": "standard", "norm_coefficient": 0.0} if op == "Momentum" else {}
    model = optimizer_model(op, [(2,), (3,)], np.float32, attributes)
    edit(model.graph.node[0])
    return model


def _set(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + ([helper.make_attribute(name, value)] if value is not None else []))


@pytest.mark.parametrize("op, edit, message", [
    ("Adam", lambda n: setattr(n, "op_type", "Lamb"), r"Lamb node 'opt'.*not an operator"),
    ("Adam", lambda n: n.input.pop(), r"Adam node 'opt'.*R, T, then X1..Xn, G1..Gn, V1..Vn, H1..Hn"),
    ("Adagrad", lambda n: n.output.pop(), r"Adagrad node 'opt'.*2 optimized tensor\(s\) give 4 outputs"),
    ("Adagrad", lambda n: n.input.__setitem__(3, ""), r"Adagrad node 'opt'.*inputs \[3\] are empty"),
    ("Momentum", lambda n: _set(n, "mode", "heavy_ball"), r"Momentum node 'opt'.*'mode'.*'heavy_ball'"),
    ("Momentum", lambda n: _set(n, "alpha", None), r"Momentum node 'opt'.*required attribute 'alpha'"),
    ("Adam", lambda n: _set(n, "alpha", 1), r"Adam node 'opt'.*attribute 'alpha' must be FLOAT, got INT"),
    ("Adam", lambda n: _set(n, "gamma", 0.5), r"Adam node 'opt'.*unknown attribute\(s\) \['gamma'\]"),
])
def test_errors_name_the_node_and_what_is_wrong(op, edit, message):
    with pytest.raises(PreviewTrainingError, match=message):
        lower_preview_training(_edited(op, edit))


def _retyped(position: int, element=None, dims=None):
    def edit(model):
        tensor = model.graph.input[position].type.tensor_type
        if element is not None:
            tensor.elem_type = element
        if dims is not None:
            tensor.shape.dim.add().dim_value = dims
    return edit


@pytest.mark.parametrize("edit, message", [
    (_retyped(1, element=TensorProto.FLOAT), r"Adam node 'opt'.*input T \('T'\) must be an int64 scalar, got FLOAT"),
    (_retyped(0, dims=2), r"Adam node 'opt'.*input R \('R'\) must be a float or double scalar, got shape \[2\]"),
    (_retyped(3, element=TensorProto.DOUBLE), r"Adam node 'opt'.*all float or all double, got \{'X0': 'FLOAT', "
                                              r"'X1': 'DOUBLE'"),
])
def test_type_errors_name_the_input(edit, message):
    model = optimizer_model("Adam", [(2,), (3,)], np.float32, {})
    edit(model)
    with pytest.raises(PreviewTrainingError, match=message):
        lower_preview_training(model)


def test_a_model_without_preview_nodes_keeps_its_function():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    lowered = lower_preview_training(model)
    _check_lowered(model, lowered)
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(_run(lowered, {"x": x})[0], [0.0, 0.0, 2.0])
