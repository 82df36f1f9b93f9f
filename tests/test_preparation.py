"""Model preparation passes that the other test files do not reach on their own."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from graphopt.preparation import fold_constant_expressions, infer_shapes

F = TensorProto.FLOAT


def _constant(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def test_small_constant_expressions_fold_so_shape_inference_sees_them():
    # TorchScript's nn.Upsample(scale_factor=2): Resize scales as a Concat of Constants
    nodes = [_constant("batch_scales", np.array([1.0, 1.0], np.float32)),
             _constant("spatial", np.array([2.0, 2.0], np.float32)),
             helper.make_node("Concat", ["batch_scales", "spatial"], ["scales"], axis=0),
             helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Mul", ["up", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["n", 2, 3, 3])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(np.ones((1,), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)

    def output_dims(m):
        inferred = infer_shapes(m, data_prop=True).graph
        info = next(v for v in inferred.value_info if v.name == "up")
        return [d.dim_value or d.dim_param or None for d in info.type.tensor_type.shape.dim]

    assert output_dims(model)[2:] != [6, 6]  # without folding, inference cannot know the spatial size
    folded = fold_constant_expressions(model)
    scales = next(n for n in folded.graph.node if n.output[0] == "scales")
    assert scales.op_type == "Constant"
    np.testing.assert_array_equal(numpy_helper.to_array(scales.attribute[0].t), [1, 1, 2, 2])
    assert output_dims(folded)[2:] == [6, 6]
    assert [n.op_type for n in folded.graph.node][-2:] == ["Resize", "Mul"]  # what reads x or a weight stays


def test_initializers_and_large_results_are_not_folded():
    nodes = [_constant("c", np.array([2.0], np.float32)), helper.make_node("Mul", ["w", "c"], ["scaled"]),
             _constant("big", np.ones(100, np.float32)), helper.make_node("Neg", ["big"], ["y"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("scaled", F, None),
                                               helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(np.ones((1,), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    assert [n.op_type for n in fold_constant_expressions(model).graph.node] == ["Constant", "Mul", "Constant", "Neg"]
