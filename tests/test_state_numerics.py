"""State numerics (issue 10, item 2): extreme but finite gradients against torch.optim, reads of
state that must not change later results, and state-dict round trips that continue bit for bit.

The references are torch.optim's own updates on the same float32 values (skipped without torch)
and, for reads and round trips, the same graphopt run left alone: those must be bitwise equal.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import optim
from graphopt.checkpoint import load_state_dict, save_state_dict
from graphopt.runtime import Runtime

KINDS = [
    ("SGD", dict(lr=0.01, momentum=0.9)),
    ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.0, 0.9), amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
]
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(KINDS)]
SHAPES = [(37, 29), (300,), (5,)]  # 1378 elements: several rows of 128, split between 2 threads


def _runtime():
    return Runtime(chunk_size=128, threads=2)


def _torch_pair(kind, kwargs, init):
    torch = pytest.importorskip("torch")
    ours = [graphopt.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    return ours, theirs, getattr(optim, kind)(ours, **kwargs), getattr(torch.optim, kind)(theirs, foreach=False,
                                                                                          **kwargs)


def _step_both(ours, theirs, opt, ref, grads):
    import torch

    for p, q, g in zip(ours, theirs, grads):
        p.grad = g
        q.grad = torch.from_numpy(g.copy())
    opt.step()
    ref.step()


def test_sgd_momentum_with_zero_lr_leaves_a_huge_finite_gradient_finite():
    """One gradient of 2e19 (finite float32) with lr=0: torch leaves the parameter unchanged."""
    init = [np.array([1.0, -2.0, 3.0], np.float32)]
    ours, theirs, opt, ref = _torch_pair("SGD", dict(lr=0.0, momentum=0.9), init)
    _step_both(ours, theirs, opt, ref, [np.full(3, 2e19, np.float32)])
    np.testing.assert_array_equal(theirs[0].detach().numpy(), init[0])  # the reference: unchanged
    np.testing.assert_array_equal(ours[0].data, init[0])
    np.testing.assert_array_equal(opt.state[ours[0]]["momentum_buffer"], ref.state[theirs[0]]["momentum_buffer"])


@pytest.mark.parametrize("kind, kwargs", [("Adam", dict(lr=0.1, betas=(0.0, 0.999))),
                                          ("RMSprop", dict(lr=0.1, alpha=0.999))])
def test_second_moments_are_scaled_before_squaring_as_torch_does(kind, kwargs):
    """``(1 - beta2) * g * g`` left to right, as torch's addcmul: with g = 1e20, ``g * g`` alone
    overflows float32 (the moment would be inf and the step 0), ``(1e-3 * g) * g`` = 1e37 does not."""
    init = [np.array([0.5], np.float32)]
    ours, theirs, opt, ref = _torch_pair(kind, kwargs, init)
    _step_both(ours, theirs, opt, ref, [np.array([1e20], np.float32)])
    expected = theirs[0].detach().numpy()
    assert expected[0] != init[0][0]  # torch moves
    np.testing.assert_allclose(ours[0].data, expected, rtol=1e-6)


def test_centered_rmsprop_whose_second_moment_overflows_leaves_the_parameter_as_torch_does():
    """g = 1e30: ``square_avg`` and ``grad_avg ** 2`` both overflow float32; torch's fused
    ``square_avg - grad_avg * grad_avg`` is inf (the step is 0), two plain ops would give inf - inf = NaN."""
    init = [np.array([0.5, -0.25], np.float32)]
    ours, theirs, opt, ref = _torch_pair("RMSprop", dict(lr=0.1, centered=True), init)
    _step_both(ours, theirs, opt, ref, [np.array([1e30, -1e30], np.float32)])
    np.testing.assert_array_equal(theirs[0].detach().numpy(), init[0])  # the reference: unchanged
    np.testing.assert_array_equal(ours[0].data, init[0])


def test_adam_second_moment_of_huge_gradients_stays_finite_over_a_long_run():
    """g = 1.8e19: g * g = 3.2e38 is finite, and so is torch's ``exp_avg_sq`` for ever; a buffer holding
    ``exp_avg_sq / scale`` with ``scale = 0.999 ** t`` overflowed after ~720 steps."""
    init = [np.array([0.0, 1.0], np.float32)]
    ours, theirs, opt, ref = _torch_pair("Adam", dict(lr=0.01), init)
    grad = np.array([1.8e19, -1.8e19], np.float32)
    for _ in range(1500):
        _step_both(ours, theirs, opt, ref, [grad])
    expected = theirs[0].detach().numpy()
    np.testing.assert_allclose(expected, init[0] - 0.01 * 1500 * np.sign(grad), rtol=1e-3)  # sanity: ~lr a step
    assert np.all(np.isfinite(opt.state[ours[0]]["exp_avg_sq"]))
    np.testing.assert_allclose(ours[0].data, expected, rtol=1e-4)
    np.testing.assert_allclose(opt.state[ours[0]]["exp_avg_sq"], ref.state[theirs[0]]["exp_avg_sq"].numpy(),
                               rtol=1e-4)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-12, 1.0, 1e12, 1e18])
@pytest.mark.parametrize("kind, kwargs", KINDS, ids=IDS)
def test_matches_torch_at_every_float32_magnitude(kind, kwargs, magnitude):
    """Gradients of ``magnitude`` times N(0, 1) for 30 steps: finite where torch is, and close to it."""
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(6, 4), (7,)]]
    ours, theirs, opt, ref = _torch_pair(kind, kwargs, init)
    for step in range(30):
        grads = [(magnitude * rng.standard_normal(a.shape)).astype(np.float32) for a in init]
        _step_both(ours, theirs, opt, ref, grads)
        for p, q in zip(ours, theirs):
            expected = q.detach().numpy()
            assert np.all(np.isfinite(expected)), "the reference itself left float32"
            np.testing.assert_allclose(p.data, expected, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
            for slot, value in ref.state[q].items():
                if slot != "step" and value is not None:
                    theirs_slot = value.numpy()
                    scale = max(float(np.abs(theirs_slot).max()), np.finfo(np.float32).tiny)
                    np.testing.assert_allclose(opt.state[p][slot] / scale, theirs_slot / scale, rtol=1e-4,
                                               atol=1e-5, err_msg=f"{slot} at step {step}")


def _run(kind, kwargs, steps, read_every=None, resume_at=None, tmp_path=None):
    """``steps`` steps on gradients drawn from a fixed stream; optionally reading the state every
    ``read_every`` steps, or moving to a new optimizer through a state dict after ``resume_at``."""
    rng = np.random.default_rng(3)
    params = [graphopt.Parameter(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
    opt = getattr(optim, kind)(params, runtime=_runtime(), **kwargs)
    for step in range(1, steps + 1):
        for p in params:
            p.grad = (rng.standard_normal(p.shape) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
        opt.step()
        if read_every and step % read_every == 0:
            state = opt.state if step % (2 * read_every) else opt.state_dict()["state"]
            assert state
        if step == resume_at:
            saved = opt.state_dict()
            if tmp_path is not None:
                save_state_dict(saved, tmp_path / "state.npz")
                saved = load_state_dict(tmp_path / "state.npz")
            data = [p.data.copy() for p in params]
            params = [graphopt.Parameter(d) for d in data]
            opt = getattr(optim, kind)(params, runtime=_runtime(), **kwargs)
            opt.load_state_dict(saved)
    return [p.data for p in params], opt.state_dict()


def _assert_bitwise_equal(run, reference):
    (params, state), (expected, expected_state) = run, reference
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p.view(np.uint32), e.view(np.uint32))
    for index, slots in expected_state["state"].items():
        for slot, value in slots.items():
            got = state["state"][index][slot]
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got.view(np.uint32), value.view(np.uint32), err_msg=slot)
            else:
                assert got == value, slot


@pytest.mark.parametrize("kind, kwargs", KINDS, ids=IDS)
def test_reading_state_never_changes_later_results(kind, kwargs):
    untouched = _run(kind, kwargs, steps=60)
    _assert_bitwise_equal(_run(kind, kwargs, steps=60, read_every=7), untouched)
    _assert_bitwise_equal(_run(kind, kwargs, steps=60, read_every=1), untouched)


@pytest.mark.parametrize("kind, kwargs", KINDS, ids=IDS)
def test_state_dict_round_trip_continues_bit_for_bit(kind, kwargs, tmp_path):
    untouched = _run(kind, kwargs, steps=60)
    _assert_bitwise_equal(_run(kind, kwargs, steps=60, resume_at=23), untouched)
    _assert_bitwise_equal(_run(kind, kwargs, steps=60, resume_at=41, tmp_path=tmp_path), untouched)
