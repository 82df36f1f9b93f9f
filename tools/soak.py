"""Soak: many optimizer and Trainer steps, resident memory sampled along the way (issue 10, item 8).

Runs ``--steps`` Adam steps over a few float32 tensors (``--params`` elements in all), then
``--trainer-steps`` Trainer steps on a small MLP (``loss = mean((tanh(x W1 + b1) W2 + b2 - t)^2)``),
sampling the process's resident set size (RSS, from /proc/self/statm) ``--samples`` times per phase.
The verdict compares the last sample with the one taken after the first tenth of the steps
(the warm-up, when sessions and buffers are allocated): growth above ``--tolerance-mb`` is a leak.

    python tools/soak.py [--steps 10000] [--trainer-steps 2000] [--params 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import optim

MB = 1024 * 1024


def rss_mb() -> float:
    """The resident set size now, in MiB (/proc/self/statm; peak RSS from getrusage where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sample_points(steps: int, samples: int) -> set[int]:
    """Step counts after which RSS is sampled: the end of the warm-up tenth, then evenly to the end."""
    warmup = max(1, steps // 10)
    return {warmup} | {warmup + round(k * (steps - warmup) / max(1, samples - 1)) for k in range(samples)}


def _run(step, steps: int, samples: int, progress) -> list[tuple[int, float]]:
    points, trace = _sample_points(steps, samples), []
    for t in range(1, steps + 1):
        step(t)
        if t in points:
            trace.append((t, rss_mb()))
            progress(f"  step {t:6d}  RSS {trace[-1][1]:8.1f} MiB")
    return trace


def optimizer_soak(steps: int, params: int, samples: int = 11, progress=print) -> list[tuple[int, float]]:
    """Adam over four tensors of about ``params`` elements in all; (step, RSS MiB) samples."""
    rng = np.random.default_rng(0)
    sizes = [params // 2, params // 4, params // 4 - params // 100, params // 100]
    tensors = [graphopt.Parameter(rng.standard_normal(max(1, n)).astype(np.float32), name=f"w{i}")
               for i, n in enumerate(sizes)]
    opt = optim.Adam(tensors, lr=1e-4, weight_decay=1e-4)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in tensors] for _ in range(3)]

    def step(t: int) -> None:
        for p, g in zip(tensors, grads[t % 3]):
            p.grad = g
        opt.step()

    trace = _run(step, steps, samples, progress)
    assert all(np.isfinite(p.data).all() for p in tensors), "non-finite parameters after the soak"
    return trace


def mlp_model(inputs: int = 16, hidden: int = 64, outputs: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``loss = mean((tanh(x @ W1 + b1) @ W2 + b2 - t) ** 2)`` in float32."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32), n)
             for n, s in (("W1", (inputs, hidden)), ("W2", (hidden, outputs)))]
    inits += [numpy_helper.from_array(np.zeros(n, np.float32), name) for name, n in (("b1", hidden), ("b2", outputs))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y0"]),
             helper.make_node("Add", ["y0", "b2"], ["y"]), helper.make_node("Sub", ["y", "t"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["loss"], keepdims=0)]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "soak_mlp", [helper.make_tensor_value_info("x", f32, ["batch", inputs]),
                                                  helper.make_tensor_value_info("t", f32, ["batch", outputs])],
                              [helper.make_tensor_value_info("loss", f32, [])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def trainer_soak(steps: int, samples: int = 11, batch: int = 32, progress=print) -> tuple[list, float, float]:
    """Trainer steps on :func:`mlp_model`; (step, RSS MiB) samples, the first and the last loss."""
    rng = np.random.default_rng(1)
    trainer = graphopt.Trainer(mlp_model(), loss="loss", optimizer=optim.Adam(lr=1e-2))
    target = rng.standard_normal((16, 4)).astype(np.float32)
    batches = []
    for _ in range(4):
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        batches.append({"x": x, "t": np.tanh(x @ target).astype(np.float32)})
    losses = []

    def step(t: int) -> None:
        losses.append(trainer.step(batches[t % len(batches)]))

    trace = _run(step, steps, samples, progress)
    return trace, losses[0], losses[-1]


def verdict(trace: list[tuple[int, float]], tolerance_mb: float) -> tuple[float, bool]:
    """Growth from the first sample (after warm-up) to the last, in MiB, and whether it is within tolerance."""
    growth = trace[-1][1] - trace[0][1]
    return growth, growth <= tolerance_mb


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="Adam steps")
    parser.add_argument("--trainer-steps", type=int, default=2_000)
    parser.add_argument("--params", type=int, default=1_000_000, help="elements over the Adam tensors")
    parser.add_argument("--samples", type=int, default=11, help="RSS samples per phase")
    parser.add_argument("--tolerance-mb", type=float, default=8.0, help="growth after warm-up called flat")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda text: None) if args.quiet else print
    results = {}
    say(f"RSS at start: {rss_mb():.1f} MiB")
    start = time.perf_counter()
    say(f"optimizer: Adam, {args.params} float32 elements in 4 tensors, {args.steps} steps")
    results["optimizer"] = {"trace": optimizer_soak(args.steps, args.params, args.samples, say),
                            "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    say(f"trainer: MLP 16-64-4, Adam, {args.trainer_steps} steps")
    trace, first, last = trainer_soak(args.trainer_steps, args.samples, progress=say)
    results["trainer"] = {"trace": trace, "seconds": time.perf_counter() - start, "loss": (first, last)}
    say(f"trainer loss: {first:.4f} at step 1, {last:.4f} at step {args.trainer_steps}")
    for phase, result in results.items():
        growth, flat = verdict(result["trace"], args.tolerance_mb)
        result.update(growth_mb=growth, flat=flat)
        say(f"{phase}: {result['seconds']:.1f} s, RSS {result['trace'][0][1]:.1f} -> {result['trace'][-1][1]:.1f} MiB "
            f"after warm-up ({growth:+.1f} MiB): {'flat' if flat else 'GROWS'}")
    return results


if __name__ == "__main__":
    main()
