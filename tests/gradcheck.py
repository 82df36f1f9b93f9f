"""Gradient checks: the rules of `graphopt.autodiff` against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from graphopt.autodiff import add_gradients

D = TensorProto.DOUBLE


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """ONNX Runtime where it has float64 kernels, the ONNX reference evaluator otherwise."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - a missing float64 kernel
        return ReferenceEvaluator(model).run(None, feeds)
    return session.run(None, feeds)


def _model(nodes, inputs: dict, output: str, initializers=()) -> onnx.ModelProto:
    """``loss = sum(output * R)`` for a fixed random R, over graph inputs of the dtype of ``inputs``."""
    dtype = next(iter(inputs.values())).dtype
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    probe = helper.make_model(helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info(k, elem, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(output, elem, None)], initializer=list(initializers)),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    (value,) = _run(probe, inputs)
    weights = numpy_helper.from_array(np.random.default_rng(99).standard_normal(value.shape).astype(dtype), "R")
    loss_nodes = [helper.make_node("Mul", [output, "R"], ["weighted"]),
                  helper.make_node("ReduceSum", ["weighted"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes + loss_nodes, "g",
                              [helper.make_tensor_value_info(k, elem, v.shape) for k, v in inputs.items()],
                              [helper.make_tensor_value_info("loss", elem, [])],
                              initializer=[weights, *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def check_gradients(nodes, inputs: dict, wrt, output="y", initializers=(), eps=1e-6, rtol=1e-6, atol=1e-8):
    model = _model(nodes, inputs, output, initializers)
    grad_model = add_gradients(model, "loss", wrt)
    names = [o.name for o in grad_model.graph.output]
    results = dict(zip(names, _run(grad_model, inputs)))
    for name in wrt:
        analytic = results[f"{name}.grad"]
        numeric = np.zeros_like(inputs[name])
        for index in np.ndindex(inputs[name].shape):
            shifted = []
            for sign in (1, -1):
                feeds = {k: v.copy() for k, v in inputs.items()}
                feeds[name][index] += sign * eps
                shifted.append(_run(model, feeds)[0])
            numeric[index] = (shifted[0] - shifted[1]) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=f"gradient of {name}")


rng = np.random.default_rng(0)
"""Where `r` draws from: during a test, that test's own generator (tests/conftest.py replaces this one)."""


def r(*shape, positive=False, generator=None):
    """Standard normal float64 data of ``shape`` (``abs + 0.5`` if ``positive``), from ``generator`` or the test's."""
    x = (rng if generator is None else generator).standard_normal(shape)
    return np.abs(x) + 0.5 if positive else x


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def check_against_function(nodes, x: np.ndarray, function, rtol=1e-6, atol=1e-8):
    """The gradient of ``x`` in a one-input graph against central differences of ``function``,
    a float64 numpy model of the same graph (for operators whose float64 kernels are missing
    or inexact in both onnxruntime and onnx.reference)."""
    model = _model(nodes, {"x": x}, "y")
    weights = projection(model)
    analytic = _run(add_gradients(model, "loss", ["x"]), {"x": x})[1]
    eps, numeric = 1e-6, np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = np.sum((function(up) - function(down)) * weights) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def projection(model: onnx.ModelProto) -> np.ndarray:
    """The fixed random ``R`` of the ``loss = sum(y * R)`` that `_model` appended."""
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "R"))


def check_against_torch(nodes, inputs: dict, torch_fn, initializers=(), rtol=1e-4, atol=1e-5):
    """d loss / d input for every input, from graphopt's gradient graph run by ONNX Runtime and
    from torch.autograd on ``torch_fn(**inputs)`` (callers skip where torch is missing)."""
    import torch

    model = _model(nodes, inputs, "y", initializers)
    grad_model = add_gradients(model, "loss", list(inputs))
    session = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    (torch_fn(**tensors) * torch.tensor(projection(model))).sum().backward()
    for name, tensor in tensors.items():
        np.testing.assert_allclose(results[f"{name}.grad"], tensor.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"gradient of {name}")
