"""The zoo benchmark of tools/bench.py: one training step (forward, loss, backward, AdamW)
of each model of tools/zoo.py, graphopt's Trainer against PyTorch eager mode on the same
weights and batch."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

import graphopt
from graphopt import losses, optim
from graphopt.runtime import Runtime
from tools.zoo import Case, export


def zoo_peers(case: Case, threads: int) -> dict[str, Callable[[], None]]:
    """A training step of ``case``'s model in graphopt and in torch eager (default AdamW)."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = case.build()
    inputs, labels = case.batch(np.random.default_rng(0))
    loss = losses.cross_entropy("output") if case.loss == "cross_entropy" else losses.mse("output")
    trainer = graphopt.Trainer(export(copy.deepcopy(net), inputs), loss,
                               optim.AdamW(lr=1e-3, runtime=Runtime(threads=threads)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    args = [torch.from_numpy(v) for v in inputs.values()]
    target = torch.from_numpy(labels)
    criterion = torch.nn.functional.cross_entropy if case.loss == "cross_entropy" else torch.nn.functional.mse_loss

    def torch_step():
        opt.zero_grad()
        criterion(net(*args), target).backward()
        opt.step()

    return {"graphopt": lambda: trainer.step(inputs, labels=labels), "torch-eager": torch_step}
