"""One process of a fault test (launched by tests/test_faults.py with mpiexec or a torchrun-style environment).

    python tests/faults_worker.py ENGINE TIMEOUT die|freeze PIDS
    python tests/faults_worker.py ENGINE TIMEOUT truncate
    python tests/faults_worker.py ENGINE TIMEOUT train FOLDER STEPS EVERY KILL_AT OUT

``TIMEOUT``: seconds for ``distributed.init(timeout=)`` ("none": off). ``die`` / ``freeze``: after one
allreduce together, the last rank kills itself (SIGKILL) or sleeps 100 s while the others go on with
allreduces; each process first writes its pid to PIDS/rank<r>, the last one the time of its fault to
PIDS/fault. ``truncate``: a broadcast whose buffers differ in size between ranks (an error in the
engine). ``train``: the resume pattern: the MLP of distributed_worker trained for STEPS steps with
AdamW and a StepLR, a checkpoint every EVERY steps, resumed from FOLDER's last one; at step KILL_AT
(0: never) the last rank kills itself (the time in OUT.fault); the final parameters, lr and the step
it started from go to OUT (rank 0).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import distributed_worker as worker  # noqa: E402

import graphopt  # noqa: E402
from graphopt import distributed, losses, optim  # noqa: E402
from graphopt.optim import lr_scheduler  # noqa: E402

BATCH = 16


def fault(comm, mode: str, pids: str) -> None:
    """Every rank allreduces once; then the last one dies or freezes while the others keep going."""
    with open(os.path.join(pids, f"rank{comm.rank}"), "w") as f:
        f.write(str(os.getpid()))
    buffer = np.ones(1000, np.float32)
    comm.allreduce(buffer)
    if comm.rank == comm.world_size - 1:
        _note_time(os.path.join(pids, "fault"))
        if mode == "freeze":
            time.sleep(100)
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(100):
        comm.allreduce(buffer)
    raise SystemExit(f"rank {comm.rank}: 100 allreduces returned without the last rank")  # must not happen


def _note_time(path: str) -> None:
    """When the fault happens (``time.time()``), for the test to time the job's end from it."""
    with open(path, "w") as f:
        f.write(repr(time.time()))


def truncate(comm) -> None:
    """Rank 0 broadcasts 8 float32, the others expect 4: the engine reports a truncated message."""
    comm.broadcast(np.zeros(8 if comm.rank == 0 else 4, np.float32))
    comm.barrier()


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole batch of ``step``: a function of the step alone, so a resumed run sees the same data."""
    rng = np.random.default_rng(1000 + step)
    return rng.standard_normal((BATCH, 5)).astype(np.float32), rng.integers(0, 3, BATCH).astype(np.int64)


def trainer_and_scheduler(comm=None) -> tuple[graphopt.Trainer, lr_scheduler.StepLR]:
    """The MLP with AdamW (lr 0.02, halved every 4 steps)."""
    trainer = graphopt.Trainer(worker.mlp(100, False), losses.cross_entropy("logits"),
                               optim.AdamW(lr=0.02, weight_decay=0.05), communicator=comm)
    return trainer, lr_scheduler.StepLR(trainer.optimizer, step_size=4, gamma=0.5)


def train(comm, folder: str, steps: int, every: int, kill_at: int, out: str) -> None:
    trainer, scheduler = trainer_and_scheduler(comm)
    start = distributed.load_checkpoint(trainer, folder, scheduler=scheduler)
    for step in range(start, steps):
        if 0 < kill_at == step and comm.rank == comm.world_size - 1:
            _note_time(out + ".fault")
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch(step)
        trainer.step({"x": distributed.shard(x, comm)}, labels=distributed.shard(y, comm))
        scheduler.step()
        if (step + 1) % every == 0:
            distributed.save_checkpoint(trainer, folder, step + 1, scheduler=scheduler)
    if comm.rank == 0:
        np.savez(out, lr=trainer.optimizer.param_groups[0]["lr"], start=start,
                 **{name: p.data for name, p in trainer.parameters.items()})


def main() -> None:
    engine, timeout, mode, *args = sys.argv[1:]
    comm = distributed.init(engine, timeout=None if timeout == "none" else float(timeout))
    if mode == "train":
        folder, steps, every, kill_at, out = args
        train(comm, folder, int(steps), int(every), int(kill_at), out)
    elif mode == "truncate":
        truncate(comm)
    else:
        fault(comm, mode, *args)
    comm.barrier()


if __name__ == "__main__":
    main()
