"""No cost cliff when the tensors that have gradients change from step to step.

A group structure compiles an exact per-tensor graph for its first few patterns of
gradients, then one masked graph for all later ones (`graphopt.optim.execution`). These
tests rotate gradients over many patterns and check the compilations stay bounded, the
values against the float64 reference, and that the masked graph skips a tensor exactly
(bitwise unchanged parameter and state, step count not advanced) and otherwise computes
bit for bit what an exact graph computes.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import names, optim
from graphopt.optim import execution
from graphopt.transforms import AddWeightDecay, ClipByNorm, ScaleByLearningRate, chain
from graphopt.update import GroupSpec, ParamSpec, build_update
from tests.reference import ReferenceOptimizer
from tests.test_optimizers import CASES, _case_id, _settings, run_both

SHAPES = [(3, 4), (5,), (), (4, 5), (2, 3, 2), (7,), (1,), (6, 1), (3,), (2, 2), (9,), (4,)]


def _patterns(rng, count, steps):
    """Random subsets of ``range(count)`` (now and then empty or full): hundreds of distinct patterns."""
    for step in range(steps):
        if step % 17 == 5:
            yield set()
        elif step % 13 == 0:
            yield set(range(count))
        else:
            yield {i for i in range(count) if rng.random() < 0.4}


@pytest.mark.parametrize("kind, config", [
    ("Adam", dict(lr=0.01, weight_decay=0.1, clip_norm=1.0, amsgrad=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, clip_norm=0.7)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, clip_value=0.4)),
])
def test_rotating_gradients_compile_a_bounded_number_of_sessions(kind, config):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s) for s in SHAPES]
    params = [graphopt.Parameter(a, name=f"w{i}") for i, a in enumerate(init)]
    opt = getattr(optim, kind)(params, **config)
    ref = ReferenceOptimizer(kind, [dict(_settings(kind, config), params=list(init))])
    seen = set()
    for active in _patterns(rng, len(params), 120):
        seen.add(frozenset(active))
        grads = [rng.standard_normal(s) if i in active else None for i, s in enumerate(SHAPES)]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        ref.step([grads])
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.data, ref.groups[0]["params"][i], rtol=1e-10, atol=1e-12)
            assert opt.state.get(p, {}).get("step", 0) == ref.state[0][i].get("step", 0)
    assert len(seen) > 50
    # the chunked update and its group-wide reduction, the first exact patterns and the masked
    # graph: nothing per pattern
    assert opt.sessions_built <= 2 + execution._PATTERNS + 1  # noqa: SLF001


def _masked_from_the_start(opt):
    opt._executor.patterns = 0  # noqa: SLF001 - every per-tensor step runs the masked graph


@pytest.mark.parametrize("runtime", ["default", "device_buffers"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_masked_graph_matches_reference_float64(case, runtime):
    """The configurations of test_optimizers (None gradients, frozen then unfrozen, group-wide
    and per-tensor clipping), every per-tensor step through the masked graph."""
    kind, config = case
    rng = np.random.default_rng(0)
    for step, (opt, params, ref) in enumerate(run_both(kind, config, np.float64, rng, runtime)):
        if step == 0:
            _masked_from_the_start(opt)
        for g, group_params in enumerate(params):
            for i, p in enumerate(group_params):
                np.testing.assert_allclose(p.data, ref.groups[g]["params"][i], rtol=1e-10, atol=1e-12)
                ref_state, state = ref.state[g][i], opt.state.get(p, {})
                assert set(state) == set(ref_state), (g, i)
                for key, value in ref_state.items():
                    np.testing.assert_allclose(state[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{g}/{i}/{key}")
    assert any(graphs.masked is not None for structures in opt._executor._groups.values()  # noqa: SLF001
               for graphs in structures.values())


@pytest.mark.parametrize("kind, config", [
    ("Adam", dict(lr=0.01, weight_decay=0.1, clip_norm=1.0, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, clip_norm=0.5, clip_per_tensor=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1)),
])
def test_masked_graph_skips_exactly_and_updates_as_the_exact_one(kind, config):
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    masked_params = [graphopt.Parameter(a, name=f"w{i}") for i, a in enumerate(init)]
    exact_params = [graphopt.Parameter(a, name=f"w{i}") for i, a in enumerate(init)]
    masked = getattr(optim, kind)(masked_params, **config)
    exact = getattr(optim, kind)(exact_params, **config)
    _masked_from_the_start(masked)
    exact._executor.patterns = 10 ** 6  # noqa: SLF001 - a graph of its own for every pattern
    for active in _patterns(rng, len(SHAPES), 40):
        grads = [rng.standard_normal(s).astype(np.float32) if i in active else None for i, s in enumerate(SHAPES)]
        before = {i: (p.data.copy(), {k: np.copy(v) for k, v in masked.state.get(p, {}).items()})
                  for i, p in enumerate(masked_params) if i not in active}
        for opt, params in ((masked, masked_params), (exact, exact_params)):
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        for i, (a, b) in enumerate(zip(masked_params, exact_params)):
            np.testing.assert_array_equal(a.data, b.data, err_msg=f"w{i}")
            state_a, state_b = masked.state.get(a, {}), exact.state.get(b, {})
            assert set(state_a) == set(state_b)
            for key in state_a:
                np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=f"w{i}.{key}")
        for i, (data, state) in before.items():  # skipped: bitwise unchanged, step count kept
            p = masked_params[i]
            assert p.data.tobytes() == data.tobytes()
            after = masked.state.get(p, {})
            assert set(after) == set(state)
            for key, value in state.items():
                assert np.asarray(after[key]).tobytes() == np.asarray(value).tobytes(), (i, key)
    assert masked.sessions_built <= 3  # the chunked update (and its reduction), the masked graph


def test_group_wide_norm_leaves_out_skipped_tensors_whatever_came_before():
    """Weight decay before clipping by the group's norm makes a skipped tensor's update non-zero
    even with a zero gradient: the masked graph must still leave it out of the norm."""
    rng = np.random.default_rng(4)
    transform = chain(AddWeightDecay(), ClipByNorm(), ScaleByLearningRate())
    specs = tuple(ParamSpec(f"w{i}", s, np.dtype(np.float64)) for i, s in enumerate(SHAPES[:4]))
    values = {s.name: rng.standard_normal(s.shape) for s in specs}
    grads = {names.grad(s.name): rng.standard_normal(s.shape) for s in specs}
    hypers = dict(lr=0.1, lr_mult=1.0, weight_decay=0.5, decay_mult=1.0, clip_norm=0.3)
    active = {0, 2}

    def run(spec, extra):
        session = ort.InferenceSession(build_update([spec]).SerializeToString())
        feeds = {**values, **grads, **extra, **{names.hyper("group0", k): np.array(v) for k, v in hypers.items()}}
        wanted = {i.name for i in session.get_inputs()}
        return dict(zip([o.name for o in session.get_outputs()],
                        session.run(None, {k: v for k, v in feeds.items() if k in wanted})))

    masks = {names.has_grad(s.name): np.array(i in active) for i, s in enumerate(specs)}
    masked = run(GroupSpec("group0", transform, specs, masked=True), masks)
    exact = run(GroupSpec("group0", transform, tuple(specs[i] for i in sorted(active))), {})
    # the published formula, in float64: g + wd * p over the active tensors, clipped by their joint norm
    decayed = {i: grads[names.grad(specs[i].name)] + 0.5 * values[specs[i].name] for i in active}
    norm = np.sqrt(sum(float(np.sum(u * u)) for u in decayed.values()))
    for i, spec in enumerate(specs):
        out = masked[names.new(spec.name)]
        if i in active:
            expected = values[spec.name] - 0.1 * decayed[i] * (0.3 / max(norm, 0.3))
            np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
            np.testing.assert_array_equal(out, exact[names.new(spec.name)])
        else:
            assert out.tobytes() == values[spec.name].tobytes()


def test_many_groups_with_missing_gradients_compile_once_each():
    """More groups on the per-tensor path than a global cache of graphs would hold."""
    rng = np.random.default_rng(5)
    init = [[rng.standard_normal(s) for s in SHAPES[:3]] for _ in range(12)]
    params = [[graphopt.Parameter(a) for a in arrays] for arrays in init]
    opt = optim.SGD([{"params": ps} for ps in params], lr=0.1, momentum=0.9)
    ref = ReferenceOptimizer("SGD", [dict(_settings("SGD", dict(lr=0.1, momentum=0.9)), params=list(arrays))
                                     for arrays in init])
    for _ in range(20):
        grads = [[rng.standard_normal(s) if i != 1 else None for i, s in enumerate(SHAPES[:3])] for _ in params]
        for ps, gs in zip(params, grads):
            for p, g in zip(ps, gs):
                p.grad = g
        opt.step()
        ref.step(grads)
    for ps, group in zip(params, ref.groups):
        for p, expected in zip(ps, group["params"]):
            np.testing.assert_allclose(p.data, expected, rtol=1e-10, atol=1e-12)
    assert opt.sessions_built == len(params)
