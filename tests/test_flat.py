"""Flat storage and the chunked path: views, in-place updates, path choice, threads."""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import optim
from graphopt.runtime import Runtime
from tests.plans import plans_taken
from tests.reference import ReferenceOptimizer


def _params(shapes, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [graphopt.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]



def test_parameters_are_views_of_one_buffer_updated_in_place():
    params = _params([(3, 4), (7,), (2, 2, 2)])
    optimizer = optim.Adam(params, lr=0.1, runtime=Runtime(chunk_size=16, threads=2))
    flat = optimizer._flats[0][0]
    bases = {p.data.base is flat.data or p.data.base is flat.data.base for p in params}
    assert bases == {True}
    address = flat.data.ctypes.data
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    optimizer.step()
    assert flat.data.ctypes.data == address  # same memory, updated in place
    assert flat.num_rows == 2 and flat.row == 16 and flat.data.size == 32
    np.testing.assert_array_equal(flat.data[27:], 0)  # the padding stays zero


def test_full_groups_take_the_chunked_path_and_partial_ones_the_per_tensor_path(monkeypatch):
    params = _params([(5,), (6,)])
    optimizer = optim.SGD(params, lr=0.1, momentum=0.9)
    taken = plans_taken(monkeypatch)
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    optimizer.step()
    params[1].grad = None
    optimizer.step()
    assert taken == ["_ChunkedPlan", "_TensorPlan"]


def test_per_tensor_clipping_takes_the_per_tensor_path(monkeypatch):
    params = _params([(5,), (6,)])
    optimizer = optim.Adam(params, clip_norm=1.0, clip_per_tensor=True)
    taken = plans_taken(monkeypatch)
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    optimizer.step()
    assert taken == ["_TensorPlan"]


def test_graph_and_session_count_do_not_grow_with_the_number_of_tensors():
    many = _params([(3,)] * 200)
    one = _params([(600,)])
    for params in (many, one):
        optimizer = optim.Adam(params, lr=0.1)
        start = [p.data.copy() for p in params]
        for p in params:
            p.grad = np.ones(p.shape, np.float32)
        optimizer.step()
        assert optimizer.sessions_built == 1
        for p, s in zip(params, start):  # Adam's first step moves each element by lr * sign(g)
            np.testing.assert_allclose(p.data, s - 0.1, rtol=1e-5, atol=1e-6)


def test_global_clip_norm_spans_dtypes_and_rows():
    shapes = [(40,), (3, 7)]
    p32, p64 = _params(shapes[:1], np.float32, seed=1)[0], _params(shapes[1:], np.float64, seed=2)[0]
    init = [p32.data.astype(np.float64), p64.data.copy()]
    optimizer = optim.SGD([p32, p64], lr=0.1, clip_norm=0.5, runtime=Runtime(chunk_size=16, threads=3))
    assert [f.dtype for f in optimizer._flats[0]] == [np.float32, np.float64]
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    reference = ReferenceOptimizer("SGD", [dict(settings, params=init)])
    rng = np.random.default_rng(3)
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in shapes]
        p32.grad, p64.grad = grads[0].astype(np.float32), grads[1]
        optimizer.step()
        reference.step([[grads[0].astype(np.float32).astype(np.float64), grads[1]]])
    np.testing.assert_allclose(p32.data, reference.groups[0]["params"][0], rtol=1e-5)
    np.testing.assert_allclose(p64.data, reference.groups[0]["params"][1], rtol=1e-5)


def test_builtin_optimizers_update_every_buffer_in_place():
    for kind, kwargs in [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("Adam", dict(amsgrad=True)),
                         ("AdamW", {}), ("RMSprop", dict(centered=True, momentum=0.5)),
                         ("Adam", dict(clip_norm=1.0, maximize=True, weight_decay=0.1))]:
        params = _params([(10,)])
        optimizer = getattr(optim, kind)(params, **kwargs)
        params[0].grad = np.ones(10, np.float32)
        optimizer.step()
        runners = optimizer._flats[0][0].runners
        assert runners and all(not bound.copies for bound in runners.values()), kind


def test_sum_grad_accumulates_in_the_flat_sum_buffer():
    params = _params([(4,), (3,)])
    optimizer = optim.SGD(params, lr=1.0)
    start = [p.data.copy() for p in params]
    for k in range(1, 4):
        for p in params:
            p.grad = np.full(p.shape, k, np.float32)
        optimizer.sum_grad()
    params[1].grad = np.full(3, 100, np.float32)  # after the last sum_grad: ignored
    optimizer.step()
    for p, s in zip(params, start):
        np.testing.assert_allclose(p.data, s - 6.0)


def test_grad_assignment_copies_into_storage_and_in_place_accumulation_is_free():
    (p,) = _params([(4,)])
    optimizer = optim.SGD([p], lr=1.0)
    flat = optimizer._flats[0][0]
    p.grad = np.ones(4, np.float32)
    storage = p.grad
    assert np.shares_memory(storage, flat.grads)
    p.grad += 2.0
    assert p.grad is storage
    before = p.data.copy()
    optimizer.step()
    np.testing.assert_allclose(p.data, before - 3.0)


def test_a_parameter_belongs_to_one_optimizer():
    (p,) = _params([(4,)])
    first = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="already belongs to another optimizer"):
        optim.Adam([p])
    del first  # once the first optimizer is gone, another may adopt the parameter
    optim.Adam([p])


def test_runtime_options_are_checked():
    with pytest.raises(ValueError, match="chunk_size must be a positive multiple of 16"):
        Runtime(chunk_size=100)
    with pytest.raises(ValueError, match="give providers or runtime, not both"):
        optim.Adam(_params([(3,)]), providers=["CPUExecutionProvider"], runtime=Runtime())


def test_bound_result_buffers_outlive_their_creation():
    """Per-range outputs bound by pointer must stay allocated: once, freed ones were reused by
    numpy for the caller's next small arrays, which ONNX Runtime then overwrote."""
    import gc

    p = graphopt.Parameter(np.zeros(40))
    optimizer = optim.SGD([p], lr=0.1, momentum=0.9, runtime=Runtime(chunk_size=16, threads=3))
    for step in range(4):
        p.grad = np.ones(40)
        optimizer.step()
        gc.collect()
        smalls = [np.full((), 7.0) for _ in range(200)]  # would reuse freed 0-d buffers
        optimizer.step()
        assert all(float(s) == 7.0 for s in smalls), step


@pytest.mark.parametrize("kind, kwargs", [
    ("Adam", dict(lr=0.01, betas=(0.3, 0.5))),   # fast decays: old gradients vanish in ~30 steps
    ("Adam", dict(lr=0.01, betas=(0.0, 0.9))),   # decay 0: the buffer is forgotten every step
    ("SGD", dict(lr=0.1, momentum=0.2, dampening=0.1)),
    ("RMSprop", dict(lr=0.01, alpha=0.1, centered=True, momentum=0.5)),
])
def test_moving_averages_follow_the_reference_over_long_runs(kind, kwargs):
    shapes = [(20,), (3, 5)]
    params = _params(shapes, np.float64, seed=4)
    init = [p.data.copy() for p in params]
    optimizer = getattr(optim, kind)(params, runtime=Runtime(chunk_size=16, threads=2), **kwargs)
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    reference = ReferenceOptimizer(kind, [dict(settings, params=init)])
    rng = np.random.default_rng(5)
    for _ in range(60):
        grads = [rng.standard_normal(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        reference.step([grads])
    for p, expected in zip(params, reference.groups[0]["params"]):
        np.testing.assert_allclose(p.data, expected, rtol=1e-9, atol=1e-12)
    for key, value in reference.state[0][1].items():  # state reads see true values
        np.testing.assert_allclose(optimizer.state[params[1]][key], value, rtol=1e-9, atol=1e-12)


def test_float16_groups_run_chunked():
    (p,) = _params([(40,)], np.float16)
    optimizer = optim.Adam([p], lr=0.01, runtime=Runtime(chunk_size=16, threads=2))
    start = p.data.astype(np.float64)
    for _ in range(3):
        p.grad = np.ones(40, np.float16)
        optimizer.step()
    np.testing.assert_allclose(p.data.astype(np.float64), start - 0.03, atol=2e-3)


def test_device_buffers_keep_state_out_of_numpy_and_round_trip():
    def make():
        params = _params([(20,), (3, 5)], np.float64, seed=6)
        runtime = Runtime(chunk_size=16, threads=2, device_buffers=True)
        return params, optim.Adam(params, lr=0.01, amsgrad=True, runtime=runtime)

    params, optimizer = make()
    rng = np.random.default_rng(7)
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]
    for step in grads[:3]:
        for p, g in zip(params, step):
            p.grad = g
        optimizer.step()
    assert all(isinstance(b, graphopt.runtime.Buffer) for b in optimizer._flats[0][0].slots.values())
    saved, values = optimizer.state_dict(), [p.data.copy() for p in params]
    for step in grads[3:]:
        for p, g in zip(params, step):
            p.grad = g
        optimizer.step()
    other_params, other = make()
    for p, v in zip(other_params, values):
        p.data = v
    other.load_state_dict(saved)
    for step in grads[3:]:
        for p, g in zip(other_params, step):
            p.grad = g
        other.step()
    for a, b in zip(params, other_params):
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(optimizer.state[params[1]]["max_exp_avg_sq"],
                                  other.state[other_params[1]]["max_exp_avg_sq"])
