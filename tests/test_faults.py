"""graphopt.distributed under faults: a worker killed (SIGKILL) or frozen never leaves the job hanging,
on MPI (mpiexec ends the job; the watchdog ends it when a peer freezes) and gloo (every survivor raises
`CommunicationError`); an engine's error becomes a `CommunicationError`; a run killed mid-way and
restarted from its last checkpoint ends with the parameters of an uninterrupted run.

Every launch is bounded by test_distributed's TIMEOUT (180 s); the fault cases use collective timeouts
of 3 s, and each checks the time from the fault to the end of the job."""

from __future__ import annotations

import os
import pathlib
import re
import threading
import time

import numpy as np
import pytest

from graphopt import distributed
from graphopt.distributed import CommunicationError, SingleProcess
from graphopt.distributed.checkpoint import checkpoint_path, latest_step
from graphopt.distributed.communicator import Communicator
from graphopt.distributed.mpi import ABORT_CODE
from graphopt.distributed.watchdog import Watchdog

from tests.test_distributed import launch_mpi, launch_torch, needs_mpi, needs_torch

import distributed_worker  # noqa: E402 - tests/ is on sys.path through test_distributed
import faults_worker as worker  # noqa: E402

WORKER = pathlib.Path(worker.__file__)
PROMPT = 15  # seconds from a fault to the end of the job (process teardown on a loaded 2-core machine)
pytestmark = pytest.mark.xdist_group("processes")  # one pytest-xdist worker runs the multi-process tests in turn


def _launch(engine: str, n: int, args: list[str], **options) -> tuple[list[tuple[int, str]], float]:
    """The launch's outcomes, and the time (``time.time()``) it ended."""
    launch = launch_mpi if engine == "mpi" else launch_torch
    outcomes = launch(n, [engine, *args], script=WORKER, **options)
    return outcomes, time.time()


def _since(fault: pathlib.Path, ended: float) -> float:
    """Seconds from the fault (the time the faulty rank wrote just before it) to the job's end."""
    return ended - float(fault.read_text())


def _ended(pids: pathlib.Path, n: int, within: float = 5.0) -> None:
    """Every process of the job, the frozen one included, has ended (gone, or a zombie init has yet to
    reap) within ``within`` seconds of mpiexec's return (a process SIGKILLed is still exiting at first)."""
    deadline = time.monotonic() + within
    for r in range(n):
        pid = int((pids / f"rank{r}").read_text())
        while (state := _state(pid)) not in (None, "Z"):
            assert time.monotonic() < deadline, f"rank {r} (pid {pid}) is still running: state {state}"
            time.sleep(0.1)


def _state(pid: int) -> str | None:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


# -- a worker killed ----------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_a_killed_mpi_worker_ends_the_job_at_once(tmp_path, n):
    """mpiexec (hydra) sees the last rank killed and kills every other process at once (SIGKILL, so the
    survivors print nothing; mpiexec's own banner, on stdout, names the killed pid): the job's status is
    the killed one's (9), long before the watchdog's default timeout (600 s) would act."""
    [(status, err)], ended = _launch("mpi", n, ["600", "die", str(tmp_path)])
    assert status == 9, err[-2000:]
    assert _since(tmp_path / "fault", ended) < PROMPT
    _ended(tmp_path, n)


@needs_torch
@pytest.mark.parametrize("n", [2, 4])
def test_a_killed_gloo_worker_makes_every_survivor_raise(tmp_path, n):
    """gloo: each survivor's allreduce raises `CommunicationError` (a connection closed by its peer) at once,
    long before the 600 s timeout, naming the operation, its rank, the world and the engine."""
    outcomes, ended = _launch("torch", n, ["600", "die", str(tmp_path)])
    assert _since(tmp_path / "fault", ended) < PROMPT
    assert outcomes[-1][0] == -9
    for r, (status, err) in enumerate(outcomes[:-1]):
        assert status == 1, err[-2000:]
        assert f"CommunicationError: graphopt.distributed: allreduce of 4000 bytes failed on rank {r} of {n} (torch)" \
            in err, err[-2000:]
        assert "it probably died" in err, err[-2000:]


# -- a worker frozen ----------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_a_frozen_mpi_worker_is_caught_by_the_watchdog(tmp_path, n):
    """The last rank sleeps; every other rank's watchdog reports its allreduce after the 3 s timeout (the
    rank missing from the reports is the frozen one) and ``MPI_Abort`` ends every process, the frozen one
    included, with the watchdog's status."""
    [(status, err)], ended = _launch("mpi", n, ["3", "freeze", str(tmp_path)])
    assert status == ABORT_CODE, err[-2000:]
    reported = set(map(int, re.findall(rf"watchdog: rank (\d) of {n} \(mpi, pid \d+\): allreduce of 4000 bytes", err)))
    assert 0 < len(reported) and reported <= set(range(n - 1)), err[-3000:]
    if n == 2:
        assert reported == {0}
    assert "more than the timeout of 3 s" in err and "Aborting the job" in err
    assert 2.5 < _since(tmp_path / "fault", ended) < 3 + PROMPT  # the timeout runs from rank 0 entering
    _ended(tmp_path, n)


@needs_torch
def test_a_frozen_gloo_worker_makes_the_survivor_raise_at_the_timeout(tmp_path):
    """gloo's own timeout (3 s, given to ``init``): the survivor raises `CommunicationError` saying so."""
    [(status, err)], ended = _launch("torch", 2, ["3", "freeze", str(tmp_path)], wait=1)
    assert status == 1 and "CommunicationError: graphopt.distributed: allreduce of 4000 bytes failed on rank 0 of 2 " \
        "(torch)" in err, err[-2000:]
    assert "within the timeout: it is probably frozen" in err, err[-2000:]
    assert 2.5 < _since(tmp_path / "fault", ended) < 3 + PROMPT  # the timeout runs from rank 0 entering


# -- an error in the engine ---------------------------------------------------------------------


@needs_mpi
def test_an_mpi_error_is_a_communication_error_and_python_m_mpi4py_ends_the_job(tmp_path):
    """Broadcast buffers of different sizes: MPI reports a truncated message on rank 1, raised as
    `CommunicationError`; under ``python -m mpi4py`` the uncaught exception aborts the job at once (rank 0
    would otherwise wait in the next barrier until the 600 s timeout, past the launch's own bound)."""
    [(status, err)], _ = _launch("mpi", 2, ["600", "truncate"], python=("-m", "mpi4py"))
    assert status != 0
    assert "CommunicationError: graphopt.distributed: broadcast of 16 bytes failed on rank 1 of 2 (mpi): " \
        "Exception: Message truncated" in err, err[-2000:]


class _Failing(Communicator):
    """A world of 2 whose engine fails every collective as gloo does when its peer has gone."""

    engine, rank, world_size = "fake", 1, 2
    _failures = (RuntimeError,)

    def _allreduce_sum(self, buffer):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")

    _broadcast = _allgather = _reduce_scatter_sum = _barrier = lambda self, *args: self._allreduce_sum(None)


def test_every_collective_raises_the_engines_failure_as_a_communication_error():
    comm = _Failing()
    calls = {"allreduce": (lambda: comm.allreduce(np.ones(4, np.float32)), 16),
             "reduce_scatter": (lambda: comm.reduce_scatter(np.ones(4, np.float64)), 32),
             "allgather": (lambda: comm.allgather(np.ones(3, np.float32)), 24),
             "broadcast": (lambda: comm.broadcast(np.ones(5, np.int64)), 40),
             "barrier": (comm.barrier, 0)}
    for operation, (call, nbytes) in calls.items():
        with pytest.raises(CommunicationError) as caught:
            call()
        error = caught.value
        assert str(error).startswith(f"graphopt.distributed: {operation} of {nbytes} bytes failed on rank 1 of 2 "
                                     "(fake): RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer")
        assert "it probably died" in str(error) and isinstance(error.__cause__, RuntimeError)
        assert (error.operation, error.rank, error.world_size, error.engine) == (operation, 1, 2, "fake")
    with pytest.raises(ValueError, match="op must be one of"):  # graphopt's own checks are not engine failures
        comm.allreduce(np.ones(2), op="max")


# -- the watchdog itself ------------------------------------------------------------------------


def test_the_watchdog_reports_an_operation_past_its_timeout_and_aborts():
    fired = []
    done = threading.Event()
    watchdog = Watchdog(0.3, "rank 1 of 4 (test)", lambda message: (fired.append(message), done.set()), poll=0.05)
    watchdog.grace = 0.1
    watchdog.enter("allgather", 4096)
    assert done.wait(5)
    watchdog.leave()
    [message] = fired
    assert re.search(r"rank 1 of 4 \(test\): allgather of 4096 bytes \(collective #1 of this process\) has waited "
                     r"0\.\d s, more than the timeout of 0\.3 s", message), message
    assert "test_faults.py" in message  # the waiting thread's stack: where the collective was called


def test_the_watchdog_leaves_operations_within_the_timeout_alone_and_costs_no_thread_per_call():
    fired = []
    before = threading.active_count()
    comm = SingleProcess()
    comm.world_size, comm._watchdog = 2, Watchdog(0.5, "test", fired.append, poll=0.05)  # noqa: SLF001
    comm._allreduce_sum = lambda buffer: time.sleep(0.001)  # noqa: SLF001 - a 1 ms collective
    buffer = np.ones(8, np.float32)
    start = time.perf_counter()
    while time.perf_counter() - start < 1.5:  # three timeouts' worth of collectives, each well within it
        comm.allreduce(buffer)
    assert threading.active_count() == before + 1  # its one thread, started with it
    assert not fired and comm._watchdog.count > 100  # noqa: SLF001
    comm.close()
    comm._watchdog._thread.join(1)  # noqa: SLF001
    assert threading.active_count() == before


def test_an_operation_ending_during_the_grace_period_is_not_aborted(capfd):
    fired = []
    watchdog = Watchdog(0.2, "test", fired.append, poll=0.05)
    watchdog.grace = 1.0
    watchdog.enter("barrier", 0)
    time.sleep(0.6)  # past the timeout, inside the grace period
    watchdog.leave()
    time.sleep(0.8)
    watchdog.close()
    assert not fired
    assert "returned after all; not aborting" in capfd.readouterr().err


def test_timeouts_are_checked_and_accepted_by_every_engine():
    with pytest.raises(ValueError, match="Watchdog: timeout must be a positive number"):
        Watchdog(0, "test", print)
    for engine in ("single", "mpi", "torch"):  # checked before the engine is imported or started
        with pytest.raises(ValueError, match=r"init.*: timeout must be a positive number of seconds, or None, got -1"):
            distributed.init(engine, timeout=-1)
    assert distributed.init("single", timeout=5).world_size == 1
    with pytest.raises(TypeError, match="takes no options but timeout"):
        distributed.init("single", backend="gloo")


# -- checkpoints and resuming -------------------------------------------------------------------


def test_save_and_load_checkpoint_in_one_process(tmp_path):
    """Steps are files; ``keep`` latest kept; loading restores parameters, optimizer state and scheduler
    exactly; a fresh folder resumes at 0 changing nothing."""
    trainer, scheduler = worker.trainer_and_scheduler()
    assert distributed.load_checkpoint(trainer, tmp_path / "none") == 0
    for step in range(5):
        trainer.step({"x": worker.batch(step)[0]}, labels=worker.batch(step)[1])
        scheduler.step()
        distributed.save_checkpoint(trainer, tmp_path, step + 1, scheduler=scheduler, keep=2)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(checkpoint_path(tmp_path, s, p))
                                            for s in (4, 5) for p in ("", "scheduler")]
    assert latest_step(tmp_path) == 5
    resumed, resumed_scheduler = worker.trainer_and_scheduler()
    assert distributed.load_checkpoint(resumed, tmp_path, scheduler=resumed_scheduler) == 5
    for name, p in trainer.parameters.items():
        np.testing.assert_array_equal(resumed.parameters[name].data, p.data)
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 5
    assert resumed_scheduler.last_epoch == 5 and resumed.optimizer.param_groups[0]["lr"] == 0.02 * 0.5 ** (5 // 4)
    os.remove(checkpoint_path(tmp_path, 5, "scheduler"))
    with pytest.raises(FileNotFoundError, match="a scheduler was given but checkpoint 5 has none"):
        distributed.load_checkpoint(resumed, tmp_path, scheduler=resumed_scheduler)
    with pytest.raises(ValueError, match="step must be the number of steps done"):
        distributed.save_checkpoint(trainer, tmp_path, 0)


class _Peers(SingleProcess):
    """Rank 1 of 2 whose peer (rank 0) answered ``answer`` to every broadcast and gather."""

    def __init__(self, rank: int, answer: int):
        self.rank, self.world_size, self.answer = rank, 2, answer

    def broadcast(self, buffer, root=0):
        buffer[...] = self.answer
        return buffer

    def allgather(self, shard, out=None):
        return np.array([self.answer, shard[0]], shard.dtype)


def test_checkpoint_failures_raise_on_every_process(tmp_path):
    """Rank 1 raises when rank 0 reports a failed write; ranks that found different latest steps raise."""
    trainer, _ = worker.trainer_and_scheduler()
    with pytest.raises(RuntimeError, match="rank 0 failed to write"):
        distributed.save_checkpoint(trainer, tmp_path, 3, communicator=_Peers(1, 0))
    assert not os.listdir(tmp_path)  # rank 1 never writes
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError):  # rank 0's own error: its folder cannot be made
        distributed.save_checkpoint(trainer, blocked / "sub", 3, communicator=_Peers(0, 0))
    distributed.save_checkpoint(trainer, tmp_path, 3)
    with pytest.raises(RuntimeError, match=r"found different latest checkpoints .* \[7, 3\]"):
        distributed.load_checkpoint(trainer, tmp_path, communicator=_Peers(1, 7))


STEPS, EVERY, KILL_AT = 10, 3, 7


@pytest.mark.parametrize("engine", [pytest.param("mpi", marks=needs_mpi), pytest.param("torch", marks=needs_torch)])
def test_a_run_killed_and_restarted_ends_as_an_uninterrupted_one(tmp_path, engine):
    """2 processes, 10 steps of AdamW with a StepLR, a checkpoint every 3 steps. The run whose last rank is
    killed at step 7 ends promptly with a nonzero status, its last checkpoint that of step 6; rerun, it
    starts from step 6 and ends with exactly the uninterrupted run's parameters and lr: the checkpoint
    holds the float32 parameters and optimizer state bit for bit, the batches are a function of the step,
    and the same 2 processes reduce in the same order, so every step after the restart computes the
    same numbers."""
    def train(folder: str, kill_at: int, out: str):
        return _launch(engine, 2, ["600", "train", str(tmp_path / folder), str(STEPS), str(EVERY), str(kill_at),
                                   str(tmp_path / out)])

    outcomes, _ = train("whole", 0, "whole.npz")
    assert all(status == 0 for status, _ in outcomes), outcomes
    outcomes, ended = train("resumed", KILL_AT, "killed.npz")
    assert all(status != 0 for status, _ in outcomes) and _since(tmp_path / "killed.npz.fault", ended) < PROMPT
    assert latest_step(tmp_path / "resumed") == 6 and not (tmp_path / "killed.npz").exists()
    outcomes, _ = train("resumed", 0, "resumed.npz")
    assert all(status == 0 for status, _ in outcomes), outcomes
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    assert int(whole["start"]) == 0 and int(resumed["start"]) == 6
    assert float(whole["lr"]) == 0.02 * 0.5 ** (STEPS // 4)  # StepLR(step_size=4, gamma=0.5) after 10 steps
    initial = {t.name for t in distributed_worker.mlp(100, False).graph.initializer}
    assert set(whole.files) == initial | {"lr", "start"}
    for name in initial:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
    _resume_in_one_process(tmp_path / "resumed", whole)


def _resume_in_one_process(folder: pathlib.Path, whole) -> None:
    """The 2-process checkpoint of step 9 resumed by one process on the whole batch: the last step equals the
    2-process run's to float32 rounding (gradients summed in another order)."""
    assert latest_step(folder) == 9
    trainer, scheduler = worker.trainer_and_scheduler()
    assert distributed.load_checkpoint(trainer, folder, scheduler=scheduler) == 9
    x, y = worker.batch(9)
    trainer.step({"x": x}, labels=y)
    scheduler.step()
    assert trainer.optimizer.param_groups[0]["lr"] == float(whole["lr"])
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, whole[name], rtol=2e-5, atol=2e-6, err_msg=name)
