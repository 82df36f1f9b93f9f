"""The in-place analysis, against graphs built to break it.

Each unsafe case is also run in ONNX Runtime with the output bound onto the input,
to show that the wrong answer is real: the analysis is what prevents it.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt.update.inplace import can_write_in_place, proven_in_place
from graphopt.runtime import Runtime

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, shape=(1, 8)):
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info(n, F, shape if s is None else s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, F, shape) for n in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _run(model, feeds, alias=None):
    """Run with every output in its own buffer, or with output ``alias[1]`` bound onto input ``alias[0]``."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    feeds = {k: v.copy() for k, v in feeds.items()}
    results = {}
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in session.get_outputs():
        target = feeds[alias[0]] if alias and out.name == alias[1] else np.empty(out.shape, np.float32)
        results[out.name] = target
        binding.bind_output(out.name, "cpu", 0, np.float32, list(target.shape), target.ctypes.data)
    session.run_with_iobinding(binding)
    return results


def _x(shape=(1, 8)):
    return np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_reader_after_the_writer_is_unsafe_and_really_breaks():
    # y = x + 1 written onto x, then z = x * y: the Mul would read the new x.
    nodes = [helper.make_node("Add", ["x", "one"], ["y"]), helper.make_node("Mul", ["x", "y"], ["z"])]
    model = _model(nodes, [("x", None), ("one", [])], ["y", "z"])
    assert not can_write_in_place(model.graph, "x", "y")
    feeds = {"x": _x(), "one": np.array(1, np.float32)}
    assert not np.allclose(_run(model, feeds, ("x", "y"))["z"], _run(model, feeds)["z"])  # the real hazard


def test_reader_before_the_writer_is_safe():
    # m' = b * m + g, with an extra reader of m feeding the writer: safe, and equal to separate buffers.
    nodes = [helper.make_node("Mul", ["m", "b"], ["bm"]), helper.make_node("Add", ["bm", "g"], ["m2"]),
             helper.make_node("Mul", ["m2", "m"], ["other"])]
    model = _model(nodes, [("m", None), ("b", []), ("g", None)], ["m2", "other"])
    assert not can_write_in_place(model.graph, "m", "m2")  # 'other' reads m after m2 is written
    safe = _model(nodes[:2], [("m", None), ("b", []), ("g", None)], ["m2"])
    assert can_write_in_place(safe.graph, "m", "m2")
    feeds = {"m": _x(), "b": np.array(0.5, np.float32), "g": _x() * 3}
    np.testing.assert_array_equal(_run(safe, feeds, ("m", "m2"))["m2"], _run(safe, feeds)["m2"])


def test_gemm_may_overwrite_its_addend_but_not_its_row():
    nodes = [helper.make_node("Gemm", ["a", "x", "y"], ["out"])]
    model = _model(nodes, [("a", [1, 1]), ("x", None), ("y", None)], ["out"])
    assert can_write_in_place(model.graph, "y", "out")
    assert not can_write_in_place(model.graph, "x", "out")
    feeds = {"a": np.full((1, 1), 2, np.float32), "x": _x(), "y": _x() * 10}
    expected = _run(model, feeds)["out"]
    np.testing.assert_array_equal(_run(model, feeds, ("y", "out"))["out"], expected)
    assert not np.allclose(_run(model, feeds, ("x", "out"))["out"], expected)  # C is copied into Y first


def test_a_view_of_the_input_read_later_is_unsafe():
    nodes = [helper.make_node("Identity", ["x"], ["view"]), helper.make_node("Add", ["x", "one"], ["y"]),
             helper.make_node("Mul", ["view", "y"], ["z"])]
    model = _model(nodes, [("x", None), ("one", [])], ["y", "z"])
    assert not can_write_in_place(model.graph, "x", "y")


def test_non_elementwise_writer_and_graph_output_inputs_are_unsafe():
    transpose = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], [("x", [4, 4])], ["y"],
                       shape=(4, 4))
    assert not can_write_in_place(transpose.graph, "x", "y")  # a transpose reads elements it already wrote
    feeds = {"x": _x((4, 4))}
    assert not np.allclose(_run(transpose, feeds, ("x", "y"))["y"], _run(transpose, feeds)["y"])
    passthrough = _model([helper.make_node("Neg", ["x"], ["y"]), helper.make_node("Identity", ["x"], ["x_out"])],
                         [("x", None)], ["y", "x_out"])
    assert not can_write_in_place(passthrough.graph, "x", "y")


def _scan_model(body_nodes, body_outputs):
    body = helper.make_graph(body_nodes, "body", [helper.make_tensor_value_info("p", F, [8]),
                                                  helper.make_tensor_value_info("g", F, [8])],
                             [helper.make_tensor_value_info(n, F, [8]) for n in body_outputs])
    scan = helper.make_node("Scan", ["P", "G"], [n.upper() for n in body_outputs], body=body, num_scan_inputs=2)
    return _model([scan], [("P", [4, 8]), ("G", [4, 8]), ("lr", [])], [n.upper() for n in body_outputs],
                  shape=(4, 8))


def test_scan_rows_are_checked_through_the_body():
    good = _scan_model([helper.make_node("Mul", ["g", "lr"], ["u"]), helper.make_node("Sub", ["p", "u"], ["p2"])],
                       ["p2"])
    assert can_write_in_place(good.graph, "P", "P2")
    feeds = {"P": _x((4, 8)), "G": _x((4, 8)) / 7, "lr": np.array(0.5, np.float32)}
    np.testing.assert_allclose(_run(good, feeds, ("P", "P2"))["P2"], _run(good, feeds)["P2"])
    # The body also outputs p * u computed after p2 was written: unsafe.
    bad = _scan_model([helper.make_node("Mul", ["g", "lr"], ["u"]), helper.make_node("Sub", ["p", "u"], ["p2"]),
                       helper.make_node("Add", ["p2", "g"], ["t"]), helper.make_node("Mul", ["p", "t"], ["q"])],
                      ["p2", "q"])
    assert not can_write_in_place(bad.graph, "P", "P2")
    # Every reader of g runs before q is written, so Q may overwrite G: accepted, and right.
    assert can_write_in_place(bad.graph, "G", "Q")
    np.testing.assert_allclose(_run(bad, feeds, ("G", "Q"))["Q"], _run(bad, feeds)["Q"])


def test_implicit_reader_in_a_subgraph_counts():
    # A Scan over G whose body reads outer X, while y = X + 1 is written onto X: unsafe (order is free).
    body = helper.make_graph([helper.make_node("Mul", ["g", "X"], ["h"])], "body",
                             [helper.make_tensor_value_info("g", F, [1, 8])],
                             [helper.make_tensor_value_info("h", F, [1, 8])])
    nodes = [helper.make_node("Add", ["X", "one"], ["Y"]),
             helper.make_node("Scan", ["G"], ["H"], body=body, num_scan_inputs=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", F, [1, 8]),
                                           helper.make_tensor_value_info("one", F, []),
                                           helper.make_tensor_value_info("G", F, [3, 1, 8])],
                              [helper.make_tensor_value_info("Y", F, [1, 8]),
                               helper.make_tensor_value_info("H", F, [3, 1, 8])])
    assert not can_write_in_place(graph, "X", "Y")


def test_the_proof_holds_on_the_graph_onnx_runtime_runs():
    # The update w' = w + sum(t) reads w only through t = transpose(w), an ancestor of the
    # writer, and z reads w through transpose(t), after w' is written (it needs w'). On this
    # graph the pair is safe; ONNX Runtime cancels the two transposes, so the MatMul it runs
    # reads w itself, after the update overwrote it.
    nodes = [helper.make_node("Transpose", ["w"], ["t"]), helper.make_node("Transpose", ["t"], ["t2"]),
             helper.make_node("ReduceSum", ["t"], ["s"], keepdims=1), helper.make_node("Add", ["w", "s"], ["w2"]),
             helper.make_node("ReduceSum", ["w2", "axis0"], ["late"], keepdims=1),
             helper.make_node("MatMul", ["late", "t2"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("w", F, [8, 8])],
                              [helper.make_tensor_value_info("w2", F, [8, 8]),
                               helper.make_tensor_value_info("z", F, [1, 8])],
                              [numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    assert can_write_in_place(model.graph, "w", "w2")
    executable = Runtime().compile(model, keep_optimized=True)
    assert proven_in_place(model, executable, [("w", "w2")]) == set()
    feeds = {"w": _x((8, 8)) / 64}
    assert not np.allclose(_run(model, feeds, ("w", "w2"))["z"], _run(model, feeds)["z"])  # the real hazard
    assert proven_in_place(model, Runtime().compile(model), [("w", "w2")]) == set()  # no optimized graph kept


def test_a_fused_writer_of_another_domain_is_not_elementwise():
    nodes = [helper.make_node("FusedMatMul", ["x", "y"], ["z"], domain="com.microsoft")]
    model = _model(nodes, [("x", [8, 8]), ("y", [8, 8])], ["z"], shape=[8, 8])
    assert not can_write_in_place(model.graph, "x", "z")


def test_a_cancelled_transpose_pair_is_seen_in_the_optimized_graph():
    """d = x @ W.T, W2 = W - d written onto W, z = x2 @ (W.T).T: both Transposes run before the
    write, but ONNX Runtime's transpose optimizer cancels the pair, and the second MatMul,
    which nothing orders before the write, then reads W itself (the pattern of a torch export's
    reverse pass: tests/test_zoo.py's GPT drifts from torch without this proof)."""
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"]), helper.make_node("MatMul", ["x", "Wt"], ["d"]),
             helper.make_node("Transpose", ["Wt"], ["Wtt"]), helper.make_node("Sub", ["W", "d"], ["W2"]),
             helper.make_node("MatMul", ["x2", "Wtt"], ["z"])]
    model = _model(nodes, [("W", None), ("x", None), ("x2", None)], ["W2", "z"], shape=(8, 8))
    assert can_write_in_place(model.graph, "W", "W2")
    assert proven_in_place(model, Runtime().compile(model, keep_optimized=True), [("W", "W2")]) == set()


def test_without_the_optimized_graph_nothing_is_bound_in_place_and_steps_stay_right(monkeypatch):
    import graphopt
    from graphopt import losses, optim

    def cannot_save(self, serialized, threads):
        raise RuntimeError("this provider cannot save its optimized graph")

    monkeypatch.setattr(Runtime, "_session_keeping_optimized", cannot_save)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 3])],
                              [helper.make_tensor_value_info("y", F, [2, 2])],
                              [numpy_helper.from_array(np.ones((2, 3), np.float32), "w"),
                               numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.5))
    x, t = _x((2, 3)) / 6, np.zeros((2, 2), np.float32)
    trainer.step({"x": x}, labels=t)
    assert trainer._training_step()[2][2] == set()  # nothing proven, every output to its own buffer
    grad_w = 2 * (x @ np.ones((3, 2))).T @ x / 4  # d mean((x w^T)^2) / d w at w = 1, b = 0
    np.testing.assert_allclose(trainer.parameters["w"].data, 1 - 0.5 * grad_w, rtol=1e-6)
