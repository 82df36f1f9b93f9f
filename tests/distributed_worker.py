"""One process of a data-parallel run (launched by tests/test_distributed.py with mpiexec, torchrun or
a torchrun-style environment); alone, it is the single-process run on the whole batch.

    python tests/distributed_worker.py OUT_DIR ENGINE CASE...     (CASE: {facade,trainer,bn}-{sgd,adamw})

Writes OUT_DIR/<case>-rank<r>.npz for each case: the final parameters (and running statistics),
and the losses. One launch runs every case, so the processes start (and import torch) once.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphopt  # noqa: E402
from graphopt import distributed, losses, optim  # noqa: E402

STEPS = 4
BATCH = 16


def make_optimizer(name: str, params=None):
    if name == "sgd":
        return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return optim.AdamW(params, lr=0.01, weight_decay=0.05)


def data(batch: int = BATCH):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 5)).astype(np.float32)
    y = rng.integers(0, 3, batch).astype(np.int64)
    target = rng.standard_normal((batch, 3)).astype(np.float32)
    return x, y, target


def facade_run(comm, optimizer: str, c_grad: float = 1.0, micro: int = 1) -> dict[str, np.ndarray]:
    """Least squares ``mean((x @ w + b - target)^2)``, gradients by its formula on this process's shard
    (``micro`` > 1: summed over that many parts of the shard with ``sum_grad``); ``c`` gets a gradient
    (``c_grad``) on rank 0 only, none elsewhere."""
    x, _, target = data()
    rng = np.random.default_rng(100 + comm.rank)  # different on every rank: the broadcast makes them equal
    w = graphopt.Parameter(rng.standard_normal((5, 3)).astype(np.float32), name="w")
    b = graphopt.Parameter(rng.standard_normal(3).astype(np.float32), name="b")
    c = graphopt.Parameter(rng.standard_normal(4).astype(np.float32), name="c")
    opt = distributed.DataParallel(make_optimizer(optimizer, [w, b, c]), comm)
    xs, ts = distributed.shard(x, comm), distributed.shard(target, comm)
    for _ in range(STEPS):
        for part_x, part_t in zip(np.array_split(xs, micro), np.array_split(ts, micro)):
            r = part_x @ w.data + b.data - part_t
            w.grad = (2 / ts.size) * part_x.T @ r  # the shard's mean: each part's sum over the shard's size
            b.grad = (2 / ts.size) * r.sum(0)
            c.grad = np.full(4, c_grad / micro, np.float32) if comm.rank == 0 else None
            if micro > 1:
                opt.sum_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"w": w.data.copy(), "b": b.data.copy(), "c": c.data.copy()}


def mlp(seed: int, batch_norm: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {"W1": rng.standard_normal((5, 8)) * 0.5, "B1": rng.standard_normal(8) * 0.1,
               "W2": rng.standard_normal((8, 3)) * 0.5, "B2": rng.standard_normal(3) * 0.1}
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"])]
    hidden = "h"
    if batch_norm:
        weights.update({"gamma": np.ones(8), "beta": np.zeros(8), "mean": np.zeros(8), "var": np.ones(8)})
        nodes.append(helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["n"],
                                      momentum=0.9))
        hidden = "n"
    nodes += [helper.make_node("Relu", [hidden], ["a"]), helper.make_node("Gemm", ["a", "W2", "B2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def trainer_run(comm, optimizer: str, batch_norm: bool = False, steps: int = STEPS,
                batch: int = BATCH, **options) -> dict[str, np.ndarray]:
    """The MLP trained by a data-parallel `Trainer` (``options``: its overlap settings), cross-entropy on this
    process's shard."""
    x, y, _ = data(batch)
    trainer = graphopt.Trainer(mlp(100 + comm.rank, batch_norm), losses.cross_entropy("logits"),
                               make_optimizer(optimizer), communicator=comm, **options)
    xs, ys = distributed.shard(x, comm), distributed.shard(y, comm)
    found = [trainer.step({"x": xs}, labels=ys) for _ in range(steps)]
    result = {name: p.data.copy() for name, p in trainer.parameters.items()}
    result.update({f"buffer:{name}": value.copy() for name, value in trainer.buffers.items()})
    result["losses"] = np.array(found)
    return result


def counts(n: int) -> list[int]:
    """Unequal parts of ``8 n`` elements for reduce-scatter: rank 0 gets none, the last rank the rest."""
    parts = [0] + [r + 1 for r in range(1, n)]
    return parts[:-1] + [8 * n - sum(parts[:-1])]


def collectives(comm) -> dict[str, np.ndarray]:
    """Each collective on rank-dependent inputs: rank r holds ``arange(8 * n) + 100 r`` (float32)."""
    n, r = comm.world_size, comm.rank
    def mine():
        return np.arange(8 * n, dtype=np.float32) + 100 * r
    result = {"sum": comm.allreduce(mine()), "average": comm.allreduce(mine(), op="average"),
              "count": comm.allreduce(np.array([1, r], np.int64)),
              "reduce_scatter": comm.reduce_scatter(mine()),
              "reduce_scatter_average": comm.reduce_scatter(mine(), op="average"),
              "reduce_scatter_counts": comm.reduce_scatter(mine(), counts=counts(n)),
              "allgather": comm.allgather(np.full(3, r, np.float64)),
              "broadcast": comm.broadcast(mine(), root=n - 1)}
    comm.barrier()
    return result


def run(mode: str, optimizer: str, comm) -> dict[str, np.ndarray]:
    """``facade``, ``summed`` (the facade with ``sum_grad`` over 2 parts), ``trainer``, ``odd`` (the
    trainer on a batch of 15: unequal shards), ``bn`` (one step of a model with BatchNormalization),
    ``whole`` (the trainer without overlap), ``staged`` / ``bnstaged`` (the trainer / bn with a bucket, and so a
    stage, per tensor; ``staged`` on a batch of 15), or ``collectives``."""
    if mode == "collectives":
        return collectives(comm)
    if mode == "whole":
        return trainer_run(comm, optimizer, overlap=False)
    if mode in ("staged", "bnstaged"):
        return trainer_run(comm, optimizer, batch_norm=mode == "bnstaged", steps=1 if mode == "bnstaged" else STEPS,
                           batch=BATCH - (mode == "staged"), bucket_bytes=1, overlap=True)
    if mode in ("facade", "summed"):
        return facade_run(comm, optimizer, micro=2 if mode == "summed" else 1)
    if mode == "odd":
        return trainer_run(comm, optimizer, batch=BATCH - 1)
    return trainer_run(comm, optimizer, batch_norm=mode == "bn", steps=1 if mode == "bn" else STEPS)


def main() -> None:
    out, engine, *cases = sys.argv[1:]
    comm = distributed.init(None if engine == "detect" else engine)
    for case in cases:
        result = run(*case.split("-"), comm)
        np.savez(os.path.join(out, f"{case}-rank{comm.rank}.npz"), world_size=comm.world_size, engine=comm.engine,
                 **result)
    comm.barrier()


if __name__ == "__main__":
    main()
