"""ZeRO-1 (``shard_state=True``, graphopt.distributed.zero): on 2 and 4 processes on 127.0.0.1 (mpiexec,
and the torchrun environment with gloo), the sharded runs equal the unsharded data-parallel runs and
the single-process run on the whole batch to float32 rounding, with parameters identical on every
rank and ~1/W of the optimizer state on each; a checkpoint of a 4-process sharded run resumes on 2
processes and in 1 unsharded process. Refusals and the one-process world run in this process."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import graphopt
from graphopt import checkpoint, distributed, losses, optim
from graphopt.distributed import SingleProcess
from graphopt.optim import schedules
from graphopt.runtime import Runtime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_distributed as launch  # noqa: E402
import zero_worker as worker  # noqa: E402
from test_distributed import needs_mpi, needs_torch  # noqa: E402

CASES = ["facade-sgd", "facade-adamw", "summed-sgd", "clip-adamw", "nan-adamw", "trainer-sgd", "trainer-adamw",
         "odd-adamw", "staged-sgd", "bn-sgd"]
ENGINE_CASES = {"mpi": CASES, "torch": ["facade-adamw", "clip-adamw", "staged-sgd", "bn-sgd"]}  # gloo starts slowly
TIMEOUT = 180  # seconds per launch: 4 processes importing torch on 2 shared cores take a minute
WHOLE_BATCH = [c for c in CASES if not c.startswith("bn")]  # shard-wise BatchNorm differs from the whole batch
pytestmark = pytest.mark.xdist_group("processes")  # one pytest-xdist worker runs the multi-process tests in turn


def _launch(engine: str, n: int, args: list[str]) -> None:
    """test_distributed's launcher, running zero_worker.py instead of distributed_worker.py."""
    script = launch.pathlib.Path(worker.__file__)
    launch._succeeded(launch.LAUNCHERS[engine](n, args, script=script, timeout=TIMEOUT))  # noqa: SLF001


def _results(out, case: str, n: int, engine: str) -> list[dict[str, np.ndarray]]:
    results = [dict(np.load(out / f"{case}-rank{r}.npz")) for r in range(n)]
    for r in results:
        assert int(r.pop("world_size")) == n and str(r.pop("engine")) == engine
    return results


def _close(actual: dict, expected: dict, what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=2e-5, atol=2e-6, err_msg=f"{what} {name}")


def _part(result: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix) and k != prefix + "bytes"}


def _reference(case: str, n: int) -> dict[str, np.ndarray]:
    """The single-process run on the whole batch (unsharded); ``c``'s gradient, given on rank 0 only,
    averages to 1 / n."""
    mode, name = case.split("-")
    if mode in ("facade", "summed", "clip", "nan"):
        options = {"size": 400, "clip": 0.5} if mode == "clip" else {"nan_at": 2} if mode == "nan" else {}
        result = worker.facade_run(SingleProcess(), name, False, c_grad=1 / n, micro=1 + (mode == "summed"), **options)
    else:
        result = worker.trainer_run(SingleProcess(), name, False, batch=15 if mode in ("odd", "staged") else 16)
    result.pop("bytes")
    return result


def _check_case(case: str, results: list[dict[str, np.ndarray]], n: int) -> None:
    sharded = _part(results[0], "zero:")
    for r, result in enumerate(results):  # parameters and state identical on every rank
        for name, value in _part(result, "zero:").items():
            np.testing.assert_array_equal(value, sharded[name], err_msg=f"{case} {name}: rank {r} != rank 0")
    _close(sharded, _part(results[0], "dp:"), f"{case}: sharded vs unsharded data parallel")
    if case in WHOLE_BATCH:
        _close(sharded, _reference(case, n), f"{case}: sharded vs one process on the whole batch")
    unsharded = int(results[0]["dp:bytes"])
    per_rank = [int(result["zero:bytes"]) for result in results]
    assert unsharded > 0 and sum(per_rank) >= unsharded
    if case.startswith("clip"):  # 1212 float32 elements, 2 slots: shards of ceil(1216 / n) rounded up to 16
        assert per_rank == [2 * 4 * (-(-1216 // n // 16) * 16)] * n
        assert max(per_rank) <= unsharded / n + 2 * 4 * 16, (per_rank, unsharded)


def _check_resumed(out, engine: str) -> None:
    """The 4-process checkpoint (after 2 steps), resumed on 2 processes and in 1 unsharded process, ends
    where the uninterrupted 4-process run and the one-process whole-batch run end."""
    uninterrupted = _part(_results(out, "save-adamw", 4, engine)[0], "zero:")
    reference = _reference("trainer-adamw", 4)
    reference.pop("losses")
    resumed = _results(out, "resume-adamw", 2, engine)
    for r, result in enumerate(resumed):
        for name, value in _part(result, "zero:").items():
            np.testing.assert_array_equal(value, _part(resumed[0], "zero:")[name], err_msg=f"resumed {name}: rank {r}")
    for result in (_part(resumed[0], "zero:"), uninterrupted):
        result.pop("losses")
        _close(result, reference, "resumed vs uninterrupted")
    alone = worker.resume_run(SingleProcess(), "adamw", str(out), shard=False)
    alone.pop("losses"), alone.pop("bytes")
    _close(alone, reference, "resumed in one unsharded process")
    saved = checkpoint.load_state_dict(out / worker.CHECKPOINT)["optimizer"]
    assert {entry["step"] for entry in saved["state"].values()} == {worker.SAVED_AT}


@pytest.mark.parametrize("engine", [pytest.param("mpi", marks=needs_mpi), pytest.param("torch", marks=needs_torch)])
def test_sharded_state_equals_unsharded_and_resumes_on_other_world_sizes(tmp_path, engine):
    """Every case on 4 processes (and the checkpointed run), then on 2 (and the resumed run)."""
    cases = ENGINE_CASES[engine]
    _launch(engine, 4, [str(tmp_path), engine, *cases, "save-adamw"])
    for case in cases:
        _check_case(case, _results(tmp_path, case, 4, engine), 4)
    _launch(engine, 2, [str(tmp_path), engine, *cases, "resume-adamw"])
    for case in cases:
        _check_case(case, _results(tmp_path, case, 2, engine), 2)
    _check_resumed(tmp_path, engine)


# -- one process: the same code path, the refusals ------------------------------------------------


def _params(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [graphopt.Parameter(rng.standard_normal(shape).astype(np.float32), name=name)
            for name, shape in (("w", (30, 7)), ("b", (7,)), ("c", (4,)))]


def _steps(opt, params, steps: int = 3) -> None:
    for k in range(steps):
        for p in params:
            p.grad = np.sin((k + 1) * p.data) + 0.1
        opt.step()
        opt.zero_grad(set_to_none=True)


def _scheduled(opt):
    opt.schedule_lr(schedules.Step(1, 0.5))  # the lr computed inside the update graph, halved every step
    return opt


@pytest.mark.parametrize("make", [
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.05, amsgrad=True),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, clip_norm=0.5),
    lambda ps: optim.NAdam(ps, lr=0.01),  # a per-tensor scalar slot (mu_product)
    lambda ps: _scheduled(optim.SGD(ps, lr=0.05, momentum=0.9,  # several rows, standard operators, state in
                                    runtime=Runtime(chunk_size=32, threads=2, fused=False, device_buffers=True))),
])
def test_a_world_of_one_steps_and_saves_as_the_plain_optimizer(make):
    """One shard holding everything: bitwise the plain optimizer's parameters and state dict, and a state
    dict that round-trips either way (sharded -> plain, plain -> sharded)."""
    plain_params, sharded_params = _params(), _params()
    plain = make(plain_params)
    sharded = distributed.DataParallel(make(sharded_params), SingleProcess(), shard_state=True)
    _steps(plain, plain_params)
    _steps(sharded, sharded_params)
    for p, q in zip(plain_params, sharded_params):
        np.testing.assert_array_equal(q.data, p.data)
    expected, got = plain.state_dict(), sharded.state_dict()
    assert expected["param_groups"] == got["param_groups"] and expected["class"] == got["class"]
    assert worker.flat_state(expected).keys() == worker.flat_state(got).keys()
    for name, value in worker.flat_state(expected).items():
        np.testing.assert_array_equal(worker.flat_state(got)[name], value, err_msg=name)
    assert sharded.state_bytes == distributed.state_bytes(plain)
    assert list(sharded.state) == sharded_params and sharded.state[sharded_params[0]]["step"] == 3
    again_params = _params()
    again = distributed.DataParallel(make(again_params), SingleProcess(), shard_state=True)
    again.load_state_dict(expected)
    for p, q in zip(again_params, plain_params):
        q.data[...] = p.data
    _steps(plain, plain_params, 2)
    _steps(again, again_params, 2)
    for p, q in zip(plain_params, again_params):
        np.testing.assert_array_equal(q.data, p.data)


def test_a_world_of_one_trainer_trains_as_the_plain_one():
    """Trainer(shard_state=True) alone: the two-call step on one shard, the plain trainer's results."""
    sharded = worker.trainer_run(SingleProcess(), "adamw", True)
    plain = worker.trainer_run(SingleProcess(), "adamw", False)
    assert sharded.pop("bytes") == plain.pop("bytes") > 0
    _close(sharded, plain, "trainer alone")


def test_a_nonfinite_gradient_skips_the_step():
    params = _params()
    opt = distributed.DataParallel(optim.Adam(params, lr=0.01, skip_nonfinite=True), SingleProcess(), shard_state=True)
    _steps(opt, params, 1)
    before = [p.data.copy() for p in params]
    for p in params:
        p.grad = np.ones_like(p.data)
    params[1].grad[2] = np.nan
    opt.step()
    assert opt.found_inf and opt.skipped_steps == 1
    for p, old in zip(params, before):
        np.testing.assert_array_equal(p.data, old)
    assert {entry["step"] for entry in opt.state_dict()["state"].values()} == {1}
    _steps(opt, params, 1)
    assert not opt.found_inf and {entry["step"] for entry in opt.state_dict()["state"].values()} == {2}


def test_an_optimizer_that_already_stepped_moves_its_state_into_the_shards():
    params, reference = _params(), _params()
    opt, plain = optim.Adam(params, lr=0.01), optim.Adam(reference, lr=0.01)
    _steps(opt, params, 2)
    _steps(plain, reference, 2)
    sharded = distributed.DataParallel(opt, SingleProcess(), shard_state=True)
    assert distributed.state_bytes(opt) == 0 and sharded.state_bytes > 0
    _steps(sharded, params, 2)
    _steps(plain, reference, 2)
    for p, q in zip(params, reference):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_tensor_without_gradient_is_refused_by_name_and_a_group_without_any_is_left_alone():
    w, b, c = _params()
    opt = distributed.DataParallel(optim.SGD([{"params": [w, b]}, {"params": [c]}], lr=0.1, momentum=0.9),
                                   SingleProcess(), shard_state=True)
    before = [p.data.copy() for p in (w, b, c)]
    w.grad = np.ones_like(w.data)
    with pytest.raises(ValueError, match=r"parameter 'b' .*has no gradient on any process"):
        opt.step()
    for p, old in zip((w, b, c), before):
        np.testing.assert_array_equal(p.data, old)  # nothing changed
    b.grad = np.ones_like(b.data)
    opt.step()  # group 1 (c) has no gradient anywhere: it does not step, as unsharded
    np.testing.assert_array_equal(c.data, before[2])
    np.testing.assert_allclose(w.data, before[0] - 0.1, rtol=1e-6)
    state = opt.state_dict()["state"]
    assert sorted(state) == [0, 1] and state[0]["step"] == 1


def test_a_state_dict_with_per_tensor_step_counts_is_refused_by_name():
    """A state dict where tensors of one group took different numbers of steps (an unsharded run where
    one tensor sometimes had no gradient) cannot be sharded: the error names the tensor."""
    params = _params()
    plain = optim.Adam(params, lr=0.01)
    _steps(plain, params, 2)
    params[2].grad = None
    for p in params[:2]:
        p.grad = np.ones_like(p.data)
    plain.step()
    sharded = distributed.DataParallel(optim.Adam(_params(), lr=0.01), SingleProcess(), shard_state=True)
    with pytest.raises(ValueError, match=r"parameter 'c' .*has step 2, parameter 'w' .*3; a sharded optimizer"):
        sharded.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("make, reason", [
    (lambda ps: optim.SGD(ps, lr=0.1, clip_norm=1.0, clip_per_tensor=True),
     r"SGD param group 0 cannot be sharded: ClipByNorm\(per_tensor=True\) is not elementwise"),
    (lambda ps: optim.LAMB(ps, lr=0.1), r"LAMB param group 0 cannot be sharded: ScaleByTrustRatio\("),
    (lambda ps: optim.LARS(ps, lr=0.1), r"LARS param group 0 cannot be sharded: ScaleByLarsTrustRatio\("),
    (lambda ps: optim.Adafactor(ps, lr=0.1), r"Adafactor param group 0 cannot be sharded: ScaleByAdafactor\("),
    (lambda ps: optim.LBFGS(ps), "LBFGS cannot be sharded: LBFGS runs outside ONNX"),
    (lambda ps: optim.AdamW(ps, averaging=optim.EMA(0.9)), "AdamW keeps a weight average"),
])
def test_updates_that_are_not_elementwise_are_refused(make, reason):
    with pytest.raises(ValueError, match=rf"^shard_state=True: {reason}"):
        distributed.DataParallel(make(_params()), SingleProcess(), shard_state=True)


def test_muon_is_refused():
    rng = np.random.default_rng(0)
    w = graphopt.Parameter(rng.standard_normal((8, 4)).astype(np.float32), name="w")
    with pytest.raises(ValueError, match=r"shard_state=True: Muon param group 0 cannot be sharded: Orthogonalize\("):
        distributed.DataParallel(optim.Muon([w], lr=0.02), SingleProcess(), shard_state=True)


def test_a_chain_changed_after_wrapping_is_refused_at_the_step():
    params = _params()
    opt = distributed.DataParallel(optim.SGD(params, lr=0.1), SingleProcess(), shard_state=True)
    opt.param_groups[0].update(clip_norm=1.0, clip_per_tensor=True)
    for p in params:
        p.grad = np.ones_like(p.data)
    with pytest.raises(ValueError, match="SGD param group 0 cannot be sharded"):
        opt.step()


def test_the_trainer_refuses_what_it_cannot_shard(tmp_path):
    from graphopt.training import GradScaler
    model = worker.mlp(0, False)
    with pytest.raises(ValueError, match="shard_state=True needs a communicator"):
        graphopt.Trainer(model, losses.cross_entropy("logits"), optim.SGD(lr=0.1), shard_state=True)
    with pytest.raises(ValueError, match="does not support grad_scaler"):
        graphopt.Trainer(model, losses.cross_entropy("logits"), optim.SGD(lr=0.1), communicator=SingleProcess(),
                         shard_state=True, grad_scaler=GradScaler())
    trainer = graphopt.Trainer(model, losses.cross_entropy("logits"), optim.SGD(lr=0.1), communicator=SingleProcess(),
                               shard_state=True)
    with pytest.raises(NotImplementedError, match="training_info"):
        trainer.export(kind="training_info")
