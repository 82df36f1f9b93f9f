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
TIMEOUT = 60
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


def launch_mpi(n: int, args: list[str]) -> None:
    command = [MPIEXEC, "-n", str(n), "-host", "127.0.0.1", sys.executable, str(WORKER), *args]
    result = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]


def launch_torch(n: int, args: list[str]) -> None:
    """n processes with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT)."""
    port = str(_free_port())
    processes = [subprocess.Popen([sys.executable, str(WORKER), *args],
                                  env=_environment(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                                                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    try:
        outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]


CASES = [f"{mode}-{optimizer}" for mode in ("facade", "trainer") for optimizer in ("sgd", "adamw")]


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
    LAUNCHERS[engine](n, [str(tmp_path), engine, *CASES])
    for case in CASES:
        mode, optimizer = case.split("-")
        if mode == "facade":  # c has gradient 1 on rank 0 only, none elsewhere: its average is 1 / n
            reference = worker.facade_run(SingleProcess(), optimizer, c_grad=1 / n)
        else:
            reference = worker.run(mode, optimizer, SingleProcess())
        _check(case, _results(tmp_path, case, n, engine), reference)
