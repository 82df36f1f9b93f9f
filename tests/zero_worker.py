"""One process of a ZeRO-1 run (``shard_state=True``), launched by tests/test_zero.py with mpiexec or a
torchrun-style environment; alone (a `SingleProcess` world), it gives the reference runs.

    python tests/zero_worker.py OUT_DIR ENGINE CASE...    (CASE: MODE-OPTIMIZER, see `run`)

For each case, writes OUT_DIR/<case>-rank<r>.npz: the sharded run's results under ``zero:``, the
unsharded data-parallel run's under ``dp:`` (parameters, losses, consolidated optimizer state), and
the bytes of optimizer state each held. One launch runs every case.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphopt  # noqa: E402
from distributed_worker import STEPS, data, make_optimizer, mlp  # noqa: E402
from graphopt import checkpoint, distributed, losses  # noqa: E402

CHECKPOINT = "checkpoint.npz"
SAVED_AT = 2  # the checkpointed run saves after this many steps, then takes STEPS - SAVED_AT more


def flat_state(state_dict) -> dict[str, np.ndarray]:
    """An optimizer state dict's per-parameter entries as ``state:<index>:<slot>`` arrays."""
    return {f"state:{i}:{slot}": np.asarray(value) for i, entry in state_dict["state"].items()
            for slot, value in entry.items()}


def facade_run(comm, optimizer: str, shard: bool, c_grad: float = 1.0, micro: int = 1, clip: float = 0.0,
               size: int = 5, bucket_bytes: int | None = None, nan_at: int | None = None) -> dict[str, np.ndarray]:
    """Least squares ``mean((x @ w + b - target)^2)`` with ``w`` of ``size`` x 3 (``x`` padded with
    columns of ones), gradients by formula on this process's shard (``micro`` > 1: summed over that many
    parts with ``sum_grad``); ``c`` gets a gradient (``c_grad``) on rank 0 only; the lr is halved after
    the second step; ``clip``: clipping by the group's global norm; ``nan_at``: at that step the last
    rank's gradient of ``w`` holds a NaN (with ``skip_nonfinite``: every rank skips the step)."""
    x, _, target = data()
    x = np.concatenate([x, np.ones((len(x), size - x.shape[1]), np.float32)], 1) if size > x.shape[1] else x
    rng = np.random.default_rng(100 + comm.rank)  # different on every rank: the broadcast makes them equal
    w = graphopt.Parameter(rng.standard_normal((size, 3)).astype(np.float32) * 0.3, name="w")
    b = graphopt.Parameter(rng.standard_normal(3).astype(np.float32), name="b")
    c = graphopt.Parameter(rng.standard_normal(4).astype(np.float32), name="c")
    base = make_optimizer(optimizer, [w, b, c])
    base.param_groups[0]["clip_norm"] = clip
    base.skip_nonfinite = nan_at is not None
    options = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    opt = distributed.DataParallel(base, comm, shard_state=shard, **options)
    xs, ts = distributed.shard(x, comm), distributed.shard(target, comm)
    for step in range(STEPS):
        for part_x, part_t in zip(np.array_split(xs, micro), np.array_split(ts, micro)):
            r = part_x @ w.data + b.data - part_t
            w.grad = (2 / ts.size) * part_x.T @ r
            b.grad = (2 / ts.size) * r.sum(0)
            c.grad = np.full(4, c_grad / micro, np.float32) if comm.rank == 0 else None
            if step == nan_at and comm.rank == comm.world_size - 1:
                w.grad[0, 0] = np.nan  # in rank 0's shard: only the agreement tells the others
            if micro > 1:
                opt.sum_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 1:
            opt.param_groups[0]["lr"] *= 0.5
    result = {"w": w.data.copy(), "b": b.data.copy(), "c": c.data.copy(), "bytes": np.array(opt.state_bytes),
              "skipped": np.array(opt.skipped_steps)}
    result.update(flat_state(opt.state_dict()))
    return result


def trainer(comm, optimizer: str, shard: bool, batch_norm: bool = False, **options) -> graphopt.Trainer:
    return graphopt.Trainer(mlp(100 + comm.rank, batch_norm), losses.cross_entropy("logits"),
                            make_optimizer(optimizer), communicator=comm, shard_state=shard, **options)


def trainer_run(comm, optimizer: str, shard: bool, batch_norm: bool = False, batch: int = 16,
                steps: int = STEPS, start: graphopt.Trainer | None = None, **options) -> dict[str, np.ndarray]:
    """The MLP of distributed_worker trained by a data-parallel `Trainer` (cross-entropy on this
    process's shard of the batch; ``options``: its overlap settings), ``steps`` steps from ``start`` (default:
    a new trainer)."""
    x, y, _ = data(batch)
    t = start if start is not None else trainer(comm, optimizer, shard, batch_norm, **options)
    xs, ys = distributed.shard(x, comm), distributed.shard(y, comm)
    found = [t.step({"x": xs}, labels=ys) for _ in range(steps)]
    result = {name: p.data.copy() for name, p in t.parameters.items()}
    result.update({f"buffer:{name}": value.copy() for name, value in t.buffers.items()})
    result["losses"] = np.array(found)
    result["bytes"] = np.array(distributed.state_bytes(t))
    result.update(flat_state(t.state_dict()["optimizer"]))
    return result


def save_run(comm, optimizer: str, out: str) -> dict[str, np.ndarray]:
    """A sharded trainer that writes a checkpoint after `SAVED_AT` steps (rank 0 writes; every rank
    takes part in the consolidation), then goes on to `STEPS`."""
    t = trainer(comm, optimizer, True)
    trainer_run(comm, optimizer, True, steps=SAVED_AT, start=t)
    state = t.state_dict()  # collective
    if comm.rank == 0:
        checkpoint.save_state_dict(state, os.path.join(out, CHECKPOINT))
    comm.barrier()
    return trainer_run(comm, optimizer, True, steps=STEPS - SAVED_AT, start=t)


def resume_run(comm, optimizer: str, out: str, shard: bool = True) -> dict[str, np.ndarray]:
    """A new trainer (sharded over this world, or not) loads the checkpoint and takes the remaining steps."""
    t = trainer(comm, optimizer, shard)
    t.load_state_dict(checkpoint.load_state_dict(os.path.join(out, CHECKPOINT)))
    return trainer_run(comm, optimizer, shard, steps=STEPS - SAVED_AT, start=t)


def run(mode: str, optimizer: str, comm, shard: bool, out: str) -> dict[str, np.ndarray]:
    """``facade``; ``summed`` (``sum_grad`` over 2 parts); ``clip`` (a w of 400 x 3, clipping by the
    global norm 0.5, collectives through 1 KiB buckets); ``nan`` (a NaN gradient on the last rank at
    the third step, ``skip_nonfinite``); ``trainer``; ``odd`` (a batch of 15: unequal
    shards); ``staged`` (``odd`` with a bucket, and so a stage, per tensor: reduced while the backward pass
    runs); ``bn`` (BatchNormalization); ``save`` and ``resume`` (sharded only: the checkpoint)."""
    if mode in ("facade", "summed", "clip", "nan"):
        options = {"size": 400, "clip": 0.5, "bucket_bytes": 1024} if mode == "clip" else \
            {"nan_at": 2} if mode == "nan" else {}
        return facade_run(comm, optimizer, shard, micro=2 if mode == "summed" else 1, **options)
    if mode == "save":
        return save_run(comm, optimizer, out)
    if mode == "resume":
        return resume_run(comm, optimizer, out)
    options = {"bucket_bytes": 1, "overlap": True} if mode == "staged" else {}
    return trainer_run(comm, optimizer, shard, batch_norm=mode == "bn", batch=15 if mode in ("odd", "staged") else 16,
                       **options)


def main() -> None:
    out, engine, *cases = sys.argv[1:]
    comm = distributed.init(None if engine == "detect" else engine)
    for case in cases:
        mode, optimizer = case.split("-")
        result = {f"zero:{k}": v for k, v in run(mode, optimizer, comm, True, out).items()}
        if mode not in ("save", "resume"):
            result.update({f"dp:{k}": v for k, v in run(mode, optimizer, comm, False, out).items()})
        np.savez(os.path.join(out, f"{case}-rank{comm.rank}.npz"), world_size=comm.world_size, engine=comm.engine,
                 **result)
    comm.barrier()


if __name__ == "__main__":
    main()
