"""The CUDA path: the same updates with state resident on the GPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import optim
from graphopt.runtime import CUDA, Buffer, cuda_available


def _cuda_usable() -> bool:
    if not cuda_available():
        return False
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA])
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False
    return session.get_providers()[0] == CUDA


pytestmark = pytest.mark.skipif(not _cuda_usable(), reason="needs onnxruntime-gpu and a CUDA GPU")


@pytest.mark.parametrize("kind, kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(amsgrad=True)),
                                          ("AdamW", {}), ("RMSprop", dict(centered=True, momentum=0.5)),
                                          ("Adagrad", dict(initial_accumulator_value=0.1)), ("Adadelta", {}),
                                          ("Adamax", {}), ("RAdam", {}), ("Rprop", {}), ("Lion", {}), ("Signum", {})])
def test_cuda_matches_cpu_and_keeps_state_on_device(kind, kwargs):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(64, 32), (32,)]]
    runs = {}
    for providers in ([CUDA], None):
        params = [graphopt.Parameter(a) for a in init]
        optimizer = getattr(optim, kind)(params, providers=providers, **kwargs)
        grads = np.random.default_rng(1)
        for _ in range(10):
            for p in params:
                p.grad = grads.standard_normal(p.shape).astype(np.float32)
            optimizer.step()
        runs["cuda" if providers else "cpu"] = (params, optimizer)
    (gpu_params, gpu_opt), (cpu_params, _) = runs["cuda"], runs["cpu"]
    for g, c in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(g.data, c.data, rtol=1e-5, atol=1e-6)
    for flat in gpu_opt._flats[0]:
        assert flat.slots
        for buffer in flat.slots.values():
            assert isinstance(buffer, Buffer) and buffer.ortvalue.device_name().lower() == "cuda"
