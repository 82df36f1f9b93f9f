"""Per-step time of an optimizer whose tensors with gradients rotate (issue 10, item 7).

Each step only ``tensors / width`` consecutive tensors have gradients, the window moving
by one every step, so the pattern of gradients repeats only every ``tensors`` steps: more
patterns than a per-pattern graph cache holds. Prints the sessions compiled and the mean
per-step time after a warm-up.

    python tools/rotating_grads.py [--tensors 20] [--steps 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import graphopt
from graphopt import optim


def measure(tensors: int = 20, size: int = 1000, width: int = 2, steps: int = 200) -> tuple[float, int]:
    """Mean milliseconds per step after a warm-up of ``2 * tensors`` steps, and sessions compiled."""
    rng = np.random.default_rng(0)
    params = [graphopt.Parameter(rng.standard_normal(size).astype(np.float32), name=f"w{i}")
              for i in range(tensors)]
    opt = optim.Adam(params, lr=1e-3)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in params]

    def step(t: int) -> None:
        for i, p in enumerate(params):
            p.grad = grads[i] if (i - t) % tensors < width else None
        opt.step()

    warmup = 2 * tensors
    for t in range(warmup):
        step(t)
    start = time.perf_counter()
    for t in range(warmup, warmup + steps):
        step(t)
    return 1e3 * (time.perf_counter() - start) / steps, opt.sessions_built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=20)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    ms, sessions = measure(args.tensors, args.size, args.width, args.steps)
    print(f"{args.tensors} tensors of {args.size}, {args.width} with gradients, rotating: {ms:.2f} ms per step, "
          f"{sessions} sessions built in {2 * args.tensors + args.steps} steps")


if __name__ == "__main__":
    main()
