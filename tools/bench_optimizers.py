"""The optimizers benchmark of tools/bench.py: one step of every graphopt optimizer on the same
parameters, next to torch.optim's for-loop and foreach implementations where torch has the
optimizer, and the path graphopt took (chunked: the fast path; per-tensor: norms, matrix products).

The parameters are ``n`` float32 elements as square-ish matrices (Muon's needs), ``tensors`` of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import graphopt
from graphopt import optim
from graphopt.runtime import Runtime

try:
    import torch
except ImportError:  # the torch peers are skipped
    torch = None


@dataclass(frozen=True)
class Entry:
    """An optimizer as graphopt names it, its settings, and torch's name for it (None: not in torch)."""

    name: str
    kwargs: dict = field(default_factory=dict)
    torch_name: str | None = None
    foreach: bool = True  # torch has a foreach implementation
    path: str = "chunked"  # the path graphopt should take: "chunked", or "per-tensor" (norms, matrix products)


ENTRIES = [
    Entry("SGD", dict(lr=0.01, momentum=0.9), "SGD"),
    Entry("RMSprop", dict(lr=0.01), "RMSprop"),
    Entry("Adam", dict(lr=1e-3), "Adam"),
    Entry("AdamW", dict(lr=1e-3), "AdamW"),
    Entry("Adagrad", dict(lr=1e-2), "Adagrad"),
    Entry("Adadelta", dict(lr=1.0), "Adadelta"),
    Entry("Adamax", dict(lr=2e-3), "Adamax"),
    Entry("NAdam", dict(lr=2e-3), "NAdam"),
    Entry("RAdam", dict(lr=1e-3), "RAdam"),
    Entry("Rprop", dict(lr=1e-2), "Rprop"),
    Entry("ASGD", dict(lr=1e-2), "ASGD"),
    Entry("SparseAdam", dict(lr=1e-3), None),  # torch's takes sparse gradients only
    Entry("Lion", dict(lr=1e-4)),
    Entry("Signum", dict(lr=1e-2)),
    Entry("Adafactor", dict(lr=1e-2), "Adafactor", path="per-tensor"),
    # torch's Muon (Newton-Schulz in bfloat16, slow on a CPU) took 36 s a step at 4M: not a peer here
    Entry("Muon", dict(lr=1e-3), path="per-tensor"),
    Entry("LAMB", dict(lr=1e-3), path="per-tensor"),
    Entry("LARS", dict(lr=1e-2, momentum=0.9), path="per-tensor"),
]


def shapes(n: int, tensors: int) -> list[tuple[int, int]]:
    """``tensors`` matrices of about ``n / tensors`` elements, rows = 2 ** k <= columns."""
    each = max(1, n // tensors)
    rows = 2 ** int(np.log2(max(1, int(np.sqrt(each)))))
    return [(rows, max(1, each // rows))] * tensors


def path_taken(opt) -> str:
    """'chunked' if every group ran the chunked update, else 'per-tensor' (after at least one step)."""
    compiled = opt._executor._chunked  # noqa: SLF001 - the benchmark reports what the executor chose
    return "chunked" if compiled and all(v is not None for v in compiled.values()) else "per-tensor"


def optimizer_peers(entry: Entry, n: int, tensors: int, threads: int) -> tuple[dict[str, Callable[[], None]], str]:
    """graphopt's step of ``entry`` and torch's (for-loop, foreach) on the same values; the path graphopt took."""
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in shapes(n, tensors)]
    grads = [rng.standard_normal(v.shape).astype(np.float32) for v in values]
    params = [graphopt.Parameter(v) for v in values]
    opt = getattr(optim, entry.name)(params, **entry.kwargs, runtime=Runtime(threads=threads))
    for p, g in zip(params, grads):
        p.grad = g
    closure = (lambda: 0.0) if entry.name == "LBFGS" else None
    runs = {"graphopt": lambda: opt.step(closure)}
    runs["graphopt"]()
    path = path_taken(opt)
    if torch is not None and entry.torch_name is not None:
        torch.set_num_threads(threads)
        variants = ["for-loop"] + (["foreach"] if entry.foreach else [])
        for variant in variants:
            tparams = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(g.copy())
            kwargs = dict(entry.kwargs)
            if entry.foreach:
                kwargs["foreach"] = variant == "foreach"
            topt = getattr(torch.optim, entry.torch_name)(tparams, **kwargs)
            runs[f"torch-{variant}"] = (lambda o=topt: o.step(lambda: 0.0)) if entry.name == "LBFGS" else topt.step
    return runs, path
