"""Train a tiny MLP with graphopt's Adam, then export the update as a plain ONNX model.

The network (2 -> 32 -> 1, tanh, logistic loss) separates two interleaved half-moons.
Gradients are computed by hand in numpy; graphopt does the update, in ONNX Runtime.

    python examples/quickstart.py [path/to/adam_update.onnx]
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort

import graphopt
from graphopt import optim


def two_moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.stack([np.cos(angle) + label, np.sin(angle) * (1 - 2 * label) + 0.5 * label], axis=1)
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), label.astype(np.float32)


def forward_backward(params, x, y):
    """Loss and gradients of mean logistic loss for ``sigmoid(tanh(x W1 + b1) w2 + b2)``."""
    w1, b1, w2, b2 = (p.data for p in params)
    hidden = np.tanh(x @ w1 + b1)
    logit = hidden @ w2 + b2
    loss = np.mean(np.logaddexp(0, logit) - y * logit)
    d_logit = (1 / (1 + np.exp(-logit)) - y) / len(y)
    d_hidden = np.outer(d_logit, w2) * (1 - hidden ** 2)
    grads = [x.T @ d_hidden, d_hidden.sum(0), hidden.T @ d_logit, d_logit.sum(keepdims=True)]
    return float(loss), [g.astype(np.float32) for g in grads]


def main(export_path: str = "adam_update.onnx") -> None:
    rng = np.random.default_rng(0)
    x, y = two_moons(512, rng)
    params = [
        graphopt.Parameter(rng.standard_normal((2, 32)).astype(np.float32), name="w1"),
        graphopt.Parameter(np.zeros(32, np.float32), name="b1"),
        graphopt.Parameter(0.1 * rng.standard_normal(32).astype(np.float32), name="w2"),
        graphopt.Parameter(np.zeros(1, np.float32), name="b2"),
    ]
    optimizer = optim.Adam([{"params": params[:3]}, {"params": params[3:], "decay_mult": 0.0}],
                           lr=0.05, weight_decay=1e-4)
    for step in range(301):
        loss, grads = forward_backward(params, x, y)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        if step == 0:
            compiled_first = optimizer.sessions_built
        if step == 200:
            optimizer.param_groups[0]["lr"] = 0.01  # a schedule: no recompilation
        if step % 50 == 0:
            accuracy = np.mean(((np.tanh(x @ params[0].data + params[1].data) @ params[2].data
                                 + params[3].data) > 0) == y)
            print(f"step {step:3d}  loss {loss:.4f}  accuracy {accuracy:.3f}")
    print(f"ONNX Runtime sessions compiled: {compiled_first} in the first step, "
          f"{optimizer.sessions_built - compiled_first} since (the lr change compiled nothing)")

    model = optimizer.export(export_path)
    session = ort.InferenceSession(export_path, providers=["CPUExecutionProvider"])
    print(f"exported the update model to {export_path}: {len(model.graph.node)} standard ONNX nodes, "
          f"{len(session.get_inputs())} inputs, e.g. {[i.name for i in session.get_inputs()][:6]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
