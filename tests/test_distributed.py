"""graphopt.distributed: data-parallel runs on 2 and 4 processes on 127.0.0.1 (mpiexec, and the
torchrun environment with gloo) equal the single-process run on the whole batch, identical on
every rank. Each launch is bounded by a subprocess timeout."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from graphopt import distributed
from graphopt.distributed import SingleProcess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import distributed_worker as worker  # noqa: E402

WORKER = pathlib.Path(worker.__file__)
ROOT = WORKER.parent.parent
TIMEOUT = 180  # seconds per launch: a hang guard, generous for 4 processes on 2 cores busy with other tests
pytestmark = pytest.mark.xdist_group("processes")  # one pytest-xdist worker runs the multi-process tests in turn
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def _has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(not (_has_mpi4py() and MPIEXEC),
                               reason="mpi4py or mpiexec not installed (pip install 'graphopt[distributed]')")


def _environment(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
           and not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_mpi(n: int, args: list[str], script: pathlib.Path = WORKER, mpiexec: tuple[str, ...] = (),
               python: tuple[str, ...] = (), timeout: float = TIMEOUT, **env) -> list[tuple[int, str]]:
    """``mpiexec [mpiexec...] -n n python [python...] script args`` on 127.0.0.1; the job's (exit status, stderr)."""
    command = [MPIEXEC, *mpiexec, "-n", str(n), "-host", "127.0.0.1", sys.executable, *python, str(script), *args]
    result = subprocess.run(command, env=_environment(**env), capture_output=True, text=True, timeout=timeout)
    return [(result.returncode, result.stderr)]


def launch_torch(n: int, args: list[str], wait: int | None = None, script: pathlib.Path = WORKER,
                 timeout: float = TIMEOUT, **env) -> list[tuple[int, str]]:
    """n processes of ``script`` with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1,
    MASTER_PORT); each one's (exit status, stderr), or only the first ``wait`` ones' (the others are
    then killed)."""
    port = str(_free_port())
    processes = [subprocess.Popen([sys.executable, str(script), *args],
                                  env=_environment(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                                                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(n)]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in processes[:wait]]
    finally:
        for p in processes:
            p.kill()
            p.wait()
    return [(p.returncode, err) for p, err in zip(processes, errors)]


def _succeeded(outcomes: list[tuple[int, str]]) -> None:
    for status, err in outcomes:
        assert status == 0, err[-3000:]


CASES = [f"{mode}-{optimizer}" for mode in ("facade", "trainer") for optimizer in ("sgd", "adamw")]
MORE = ["summed-sgd", "odd-adamw", "bn-sgd", "collectives-none"]


def _results(out: pathlib.Path, case: str, n: int, engine: str) -> list[dict[str, np.ndarray]]:
    results = [dict(np.load(out / f"{case}-rank{r}.npz")) for r in range(n)]
    for r in results:
        assert int(r.pop("world_size")) == n and str(r.pop("engine")) == engine
    return results


def _check(case: str, results: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray]) -> None:
    for name, expected in reference.items():
        for r, result in enumerate(results):
            np.testing.assert_array_equal(result[name], results[0][name], err_msg=f"{case} {name}: rank {r} != rank 0")
        np.testing.assert_allclose(results[0][name], expected, rtol=2e-5, atol=2e-6, err_msg=f"{case} {name}")


def _has_torch() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available()


needs_torch = pytest.mark.skipif(not _has_torch(), reason="torch (with torch.distributed) not installed")
LAUNCHERS = {"mpi": launch_mpi, "torch": launch_torch}


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("engine", [pytest.param("mpi", marks=needs_mpi), pytest.param("torch", marks=needs_torch)])
def test_data_parallel_equals_one_process_on_the_whole_batch(tmp_path, engine, n):
    """SGD-momentum and AdamW, through the optimizer facade (gradients by formula) and the Trainer (an
    MLP, cross-entropy): every rank's final parameters and losses equal, and equal to the run on the
    whole batch in one process, to float32 rounding."""
    _succeeded(LAUNCHERS[engine](n, [str(tmp_path), engine, *CASES, *MORE]))
    for case in CASES + ["summed-sgd", "odd-adamw"]:
        mode, optimizer = case.split("-")
        if mode in ("facade", "summed"):  # c has gradient 1 on rank 0 only, none elsewhere: its average is 1 / n
            reference = worker.facade_run(SingleProcess(), optimizer, c_grad=1 / n, micro=1 + (mode == "summed"))
        else:
            reference = worker.run(mode, optimizer, SingleProcess())
        _check(case, _results(tmp_path, case, n, engine), reference)
    _check_batch_norm(_results(tmp_path, "bn-sgd", n, engine), n)
    _check_collectives(_results(tmp_path, "collectives-none", n, engine), n)


def _check_batch_norm(results: list[dict[str, np.ndarray]], n: int) -> None:
    """After one step: every rank equal; ``running_mean`` the whole batch's update (momentum 0.9:
    ``0.9 * 0 + 0.1 * mean(h)``), ``running_var`` the mean of the shards' unbiased variances
    (``0.9 * 1 + 0.1 * mean_r var(h_r)``), with ``h`` the first layer's output on rank 0's weights."""
    from onnx import numpy_helper
    for name in results[0]:
        for r, result in enumerate(results):
            np.testing.assert_array_equal(result[name], results[0][name], err_msg=f"bn {name}: rank {r} != rank 0")
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in worker.mlp(100, True).graph.initializer}
    h = worker.data()[0].astype(np.float64) @ weights["W1"] + weights["B1"]
    np.testing.assert_allclose(results[0]["buffer:mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    shard_var = np.mean([part.var(0, ddof=1) for part in np.array_split(h, n)], axis=0)
    np.testing.assert_allclose(results[0]["buffer:var"], 0.9 + 0.1 * shard_var, rtol=1e-5, atol=1e-6)


def _check_collectives(results: list[dict[str, np.ndarray]], n: int) -> None:
    base = np.arange(8 * n, dtype=np.float64)
    total = n * base + 100 * sum(range(n))
    for r, result in enumerate(results):
        np.testing.assert_allclose(result["sum"], total, rtol=1e-6)
        np.testing.assert_allclose(result["average"], total / n, rtol=1e-6)
        np.testing.assert_array_equal(result["count"], [n, sum(range(n))])
        np.testing.assert_allclose(result["reduce_scatter"], total[8 * r:8 * (r + 1)], rtol=1e-6)
        np.testing.assert_allclose(result["reduce_scatter_average"], total[8 * r:8 * (r + 1)] / n, rtol=1e-6)
        parts = worker.counts(n)
        start = sum(parts[:r])
        np.testing.assert_allclose(result["reduce_scatter_counts"], total[start:start + parts[r]], rtol=1e-6)
        np.testing.assert_array_equal(result["allgather"], np.repeat(np.arange(n, dtype=np.float64), 3))
        np.testing.assert_array_equal(result["broadcast"], base + 100 * (n - 1))


@needs_torch
def test_the_same_script_runs_under_torchrun(tmp_path):
    """The worker launched by torchrun itself (2 processes on 127.0.0.1), the engine detected from its environment."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this Python")
    command = [torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               str(WORKER), str(tmp_path), "detect", "trainer-sgd"]
    result = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    _check("trainer-sgd", _results(tmp_path, "trainer-sgd", 2, "torch"), worker.run("trainer", "sgd", SingleProcess()))


def test_detect_reads_the_launchers_environment():
    assert distributed.detect({"PMI_RANK": "0", "PMI_SIZE": "2"}) == "mpi"
    assert distributed.detect({"OMPI_COMM_WORLD_RANK": "1"}) == "mpi"
    assert distributed.detect({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}) == "torch"
    assert distributed.detect({"RANK": "0"}) == "single"
    assert distributed.detect({}) == "single"


def test_a_world_of_one_leaves_buffers_and_checks_them():
    comm = distributed.init("single")
    assert (comm.rank, comm.world_size) == (0, 1)
    buffer = np.arange(6, dtype=np.float32)
    assert comm.allreduce(buffer, op="average") is buffer and np.array_equal(buffer, np.arange(6))
    np.testing.assert_array_equal(comm.reduce_scatter(buffer.copy()), np.arange(6))
    np.testing.assert_array_equal(comm.reduce_scatter(buffer.copy(), counts=[6]), np.arange(6))
    with pytest.raises(ValueError, match=r"counts must be 1 sizes >= 0, one per rank, summing to the buffer's 6"):
        comm.reduce_scatter(buffer.copy(), counts=[5])
    np.testing.assert_array_equal(comm.allgather(buffer), np.arange(6))
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(buffer, op="max")
    with pytest.raises(TypeError, match="needs a float buffer"):
        comm.allreduce(np.arange(3), op="average")
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce(np.zeros((4, 4), np.float32)[:, 1])
    with pytest.raises(TypeError, match="numpy array"):
        comm.broadcast([1.0, 2.0])
    with pytest.raises(ValueError, match="root 1 is not a rank"):
        comm.broadcast(buffer, root=1)
    with pytest.raises(ValueError, match="engine must be one of"):
        distributed.init("nccl2")


def test_a_world_of_one_trains_as_the_plain_trainer():
    """A world of one: Trainer(communicator=) runs the plain fused step, with its results exactly."""
    plain = worker.trainer_run(SingleProcess(), "adamw")
    x, y, _ = worker.data()
    import graphopt
    from graphopt import losses
    trainer = graphopt.Trainer(worker.mlp(100, False), losses.cross_entropy("logits"), worker.make_optimizer("adamw"))
    for _ in range(worker.STEPS):
        trainer.step({"x": x}, labels=y)
    for name, p in trainer.parameters.items():
        np.testing.assert_array_equal(p.data, plain[name])


@needs_mpi
def test_the_digits_example_learns_on_two_processes(tmp_path):
    """examples/digits_data_parallel.py under ``mpiexec -n 2``: the loss falls, the test accuracy passes
    85% in 3 epochs, rank 0 writes a model that runs."""
    import onnxruntime as ort

    command = [MPIEXEC, "-n", "2", "-host", "127.0.0.1", sys.executable,
               str(ROOT / "examples" / "digits_data_parallel.py"), "--epochs", "3", "--out", str(tmp_path)]
    result = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 3, result.stdout  # printed by rank 0 only
    loss = [float(line.split("loss ")[1].split(",")[0]) for line in epochs]
    assert loss[-1] < 0.5 * loss[0] and float(epochs[-1].split("accuracy ")[1].rstrip("%")) >= 85
    assert "2 processes (mpi)" in result.stdout
    session = ort.InferenceSession(str(tmp_path / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)
