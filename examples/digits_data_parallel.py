"""The digits CNN of digits_cnn.py trained data-parallel: the same script alone, under mpiexec or torchrun.

    pip install -e '.[examples,distributed]'
    mpiexec -n 2 python examples/digits_data_parallel.py [--epochs 15]
    torchrun --nproc-per-node 2 examples/digits_data_parallel.py
    python examples/digits_data_parallel.py                  # one process: the plain run

Every process takes its shard of each batch of 32 (`graphopt.distributed.shard`); the Trainer
averages the gradients and the BatchNormalization statistics over the processes and applies the
same AdamW update everywhere (``Trainer(..., communicator=comm)``). Rank 0 reports and writes
<out>/digits_cnn.onnx.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

import graphopt
from graphopt import distributed, losses, optim

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from digits_cnn import accuracy, arguments, cnn, digits  # noqa: E402


def train(epochs: int = 15, batch: int = 32, seed: int = 0, out: str | pathlib.Path = "digits_out",
          comm: distributed.Communicator | None = None) -> dict:
    comm = distributed.init() if comm is None else comm
    rng = np.random.default_rng(seed)  # the same on every process: the same batches, the same model
    x_train, x_test, y_train, y_test = digits(seed)
    trainer = graphopt.Trainer(cnn(rng), loss=losses.cross_entropy("logits"),
                               optimizer=optim.AdamW(lr=3e-3, weight_decay=1e-4),
                               groups=[{"params": ["*.b", "bn.*"], "decay_mult": 0.0}], communicator=comm)
    history = {"loss": [], "test_accuracy": []}
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        losses_ = [trainer.step({"x": distributed.shard(x_train[rows], comm)},
                                labels=distributed.shard(y_train[rows], comm))
                   for rows in (order[first:first + batch] for first in range(0, len(order), batch))]
        history["loss"].append(float(np.mean(losses_)))  # the whole batches' losses: the same on every rank
        history["test_accuracy"].append(accuracy(trainer, x_test, y_test))
        if comm.rank == 0:
            print(f"epoch {epoch}: loss {history['loss'][-1]:.4f}, test accuracy {history['test_accuracy'][-1]:.2%}")
    if comm.rank == 0:
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        trainer.export(out / "digits_cnn.onnx", kind="inference")
        print(f"{comm.world_size} processes ({comm.engine}); wrote {out / 'digits_cnn.onnx'}")
    return history


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    train(args.epochs, args.batch, args.seed, args.out)
