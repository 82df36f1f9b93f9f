"""Fused update kernels in the optimizers (issue 12): every elementwise optimizer and option runs as one
generated C++ kernel, with the same results as the standard ONNX operators, written in place.

The reference is the same optimizer on ``Runtime(fused=False)``: equal to float32 rounding (the
kernels round each operation as onnxruntime does, without FMA contraction, so most are bit-exact).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import graphopt
from graphopt import native, optim
from graphopt.optim import schedules
from graphopt.runtime import Runtime

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler: fused kernels cannot be built here")

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True, clip_norm=0.5)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, scale=0.5, clip_value=0.8)),
    ("AdamW", dict(lr=0.01, averaging=optim.EMA(decay=0.9))),
    ("Adam", dict(lr=0.01, skip_nonfinite=True, averaging=optim.SWA(start=2))),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)),
    ("Adadelta", dict(lr=1.0, rho=0.8, weight_decay=0.01)),
    ("Adamax", dict(lr=0.01, weight_decay=0.01)),
    ("NAdam", dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.01)),
    ("RAdam", dict(lr=0.01, weight_decay=0.01)),
    ("Rprop", dict(lr=0.01, etas=(0.4, 1.3))),
    ("ASGD", dict(lr=0.01, t0=3, weight_decay=0.01)),
    ("SparseAdam", dict(lr=0.01)),
    ("Lion", dict(lr=0.01, weight_decay=0.1)),
    ("Signum", dict(lr=0.01, momentum=0.9, weight_decay=0.01)),
]
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(CASES)]


def _run(kind, kwargs, fused, dtype, steps=6, schedule=None):
    rng = np.random.default_rng(0)
    params = [graphopt.Parameter(rng.standard_normal(s).astype(dtype), name=f"w{i}")
              for i, s in enumerate([(37, 29), (300,), (5,)])]
    opt = getattr(optim, kind)(params, **kwargs, runtime=Runtime(fused=fused, chunk_size=256, threads=2))
    if schedule is not None:
        opt.schedule_lr(schedule)
    for step in range(steps):
        for p in params:
            grad = rng.standard_normal(p.shape).astype(dtype)
            if kind == "SparseAdam":
                grad[rng.random(p.shape) < 0.3] = 0  # absent entries
            p.grad = grad * (10.0 if step == 3 else 1.0)
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, kwargs", CASES, ids=IDS)
def test_fused_updates_equal_the_standard_operators(kind, kwargs, dtype):
    ours, fused = _run(kind, kwargs, True, dtype)
    theirs, standard = _run(kind, kwargs, False, dtype)
    compiled = list(fused._executor._chunked.values())  # noqa: SLF001
    assert compiled and all(c is not None for c in compiled)
    update, safe = compiled[0].update, compiled[0].safe
    assert any(n.domain == "ai.graphopt.fused" for n in update.optimized.graph.node), "not fused"
    assert ("params", "params.new") in safe  # written in place
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.data, rtol=rtol, atol=rtol * 1e-2)
        for key, value in standard.state[q].items():
            np.testing.assert_allclose(fused.state[p][key], value, rtol=rtol, atol=rtol * 1e-2, err_msg=key)


def test_a_compiled_schedule_runs_fused():
    schedule = schedules.Sequential([schedules.Linear(0.1, 1.0, 3), schedules.Cosine(10)], milestones=[3])
    ours, _ = _run("AdamW", dict(lr=0.01), True, np.float32, steps=8, schedule=schedule)
    theirs, _ = _run("AdamW", dict(lr=0.01), False, np.float32, steps=8, schedule=schedule)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standard"])
def test_a_fused_kernel_splits_itself_over_its_sessions_threads(fused):
    """A fused update runs whole in one call on a session of ``threads`` intra-op threads (the kernel's
    parts, past 65536 elements, on ONNX Runtime's pool); a standard one as ``threads`` one-thread row
    ranges. Either way 3 threads over 5 x 65536 + 7 elements give one thread's standard result."""
    n = 5 * 65536 + 7
    results, layouts = [], []
    for runtime in (Runtime(threads=3, fused=fused), Runtime(threads=1, fused=False)):
        p = graphopt.Parameter(np.linspace(-1, 1, n, dtype=np.float32))
        opt = optim.Adam([p], lr=0.01, weight_decay=0.1, runtime=runtime)
        for step in range(3):
            p.grad = np.cos(np.arange(n, dtype=np.float32) * (step + 1))
            opt.step()
        results.append(p.data.copy())
        compiled = next(iter(opt._executor._chunked.values()))  # noqa: SLF001
        options = compiled.update.session.get_session_options()
        layouts.append((compiled.ranges, options.intra_op_num_threads,
                        options.get_session_config_entry("session.intra_op.allow_spinning")))
    # and its threads sleep after a run rather than spin, leaving the cores to the next session
    assert layouts == [(1, 3, "0") if fused else (3, 1, "0"), (1, 1, "0")]
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-9)


def test_fused_false_and_the_environment_keep_the_standard_operators(monkeypatch):
    _, opt = _run("Adam", dict(lr=0.01), False, np.float32, steps=1)
    update = next(iter(opt._executor._chunked.values())).update  # noqa: SLF001
    assert not any(n.domain == "ai.graphopt.fused" for n in update.optimized.graph.node)
    monkeypatch.setenv("GRAPHOPT_FUSED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fused=None (the default) falls back silently
        _, opt = _run("Adam", dict(lr=0.01), None, np.float32, steps=1)
    update = next(iter(opt._executor._chunked.values())).update  # noqa: SLF001
    assert not any(n.domain == "ai.graphopt.fused" for n in update.optimized.graph.node)


def test_asking_for_fused_kernels_where_they_are_off_says_why_once(monkeypatch):
    from graphopt.native import availability

    monkeypatch.setenv("GRAPHOPT_FUSED", "off")
    monkeypatch.setattr(availability, "_warned", set())
    with pytest.warns(RuntimeWarning, match="fused update kernels are not used .*GRAPHOPT_FUSED=off"):
        _run("SGD", dict(lr=0.1), True, np.float32, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run("SGD", dict(lr=0.1, momentum=0.5), True, np.float32, steps=1)  # said once
