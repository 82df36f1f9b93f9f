"""Benchmark graphopt's optimizer steps against the memory floor, numpy and torch.optim.

    python tools/bench.py                      # the full table (several minutes)
    python tools/bench.py --sizes 1M,16M --optimizers adam --rounds 3
    python tools/bench.py --json bench.json
    python tools/bench.py --sections training  # only the training benchmarks (tools/bench_training.py)
    python tools/bench.py --sections zoo       # a training step of each zoo model (tools/bench_zoo.py)
    python tools/bench.py --sections optimizers --opt-size 4M --opt-tensors 16
                                               # one step of every optimizer (tools/bench_optimizers.py)

Every configuration (optimizer x size x tensor count) is measured side by side in
one process: each round times a few steps of every peer in turn, in a new random
order, after one untimed step (interleaved, so drift on a shared machine hits all peers
alike, and no peer always follows the same one), and the table reports medians over
rounds with their min-max. Peers:

* ``stream``: an in-place pass ``x *= c`` over N floats on the same threads: the
  bandwidth yardstick, reported in GB/s;
* ``numpy``: the same update written with in-place numpy ufuncs;
* ``graphopt-1-tensor`` (in configurations of several tensors): graphopt over the same
  N parameters as one tensor, for the cost of many tensors measured within one run;
* ``graphopt-standard`` (where graphopt's fused kernels are built, and so ``graphopt`` runs them):
  the same update on standard ONNX operators (``Runtime(fused=False)``);
* ``torch-foreach`` / ``torch-fused``: torch.optim's implementations, when torch is
  importable (RMSprop, Adadelta, Adamax, RAdam and Rprop have no fused version; Lion and
  Signum are not in torch.optim).

GB/s is effective bandwidth: the bytes an update must read and write per parameter
(e.g. Adam reads p, g, m, v and writes p, m, v: 28 bytes in float32) over the step
time. Also reported: resident memory beyond params, grads and state, per parameter
(measured in a fresh subprocess), and the time to build and compile the update for
1,000 tensors.

The ``training`` section times one full training iteration (forward, cross-entropy,
backward, Adam) of an MLP 784-1024-1024-10 at batch 64 with graphopt's Trainer three ways
(``graphopt-one-graph-standard``: one step graph, standard-operator update;
``graphopt-two-calls-fused``: gradients, then the fused kernels; ``graphopt-one-graph-fused``:
the step graph with the fused kernels' nodes; the fused ones where kernels are built), next
to the same model in PyTorch eager mode (torch's default Adam and its fused one), and
the time to build and compile the training step of ResNet-50.

The ``optimizers`` section times one step of every graphopt optimizer, next to torch.optim's
for-loop and foreach implementations where torch has it, and says which path graphopt took.

The ``zoo`` section (torch required) times one training step (forward, loss, backward,
AdamW) of each model of tools/zoo.py, graphopt's Trainer against PyTorch eager mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import graphopt  # noqa: E402
from graphopt import optim  # noqa: E402
from graphopt.fused.runtime import runs_fused  # noqa: E402
from graphopt.runtime import Runtime  # noqa: E402
from tools.bench_training import default_peer, mlp_iteration_peers, resnet50_build_time  # noqa: E402

try:
    import torch
except ImportError:  # the torch peers are skipped
    torch = None


@dataclass(frozen=True)
class Update:
    """An optimizer configuration, as graphopt, torch and numpy spell it."""

    name: str
    graphopt: Callable
    torch_name: str | None  # None: not in torch.optim (no torch peer)
    kwargs: dict
    slots: int  # state tensors per parameter
    fused: bool  # torch has a fused implementation

    @property
    def bytes_per_param(self) -> int:
        """float32 bytes read and written per parameter: p, g and slots read; p and slots written."""
        return 4 * ((2 + self.slots) + (1 + self.slots))


UPDATES = {
    "sgd": Update("SGD momentum", optim.SGD, "SGD", dict(lr=0.01, momentum=0.9), 1, True),
    "rmsprop": Update("RMSprop", optim.RMSprop, "RMSprop", dict(lr=0.01), 1, False),
    "adam": Update("Adam", optim.Adam, "Adam", dict(lr=0.001), 2, True),
    "adamw": Update("AdamW", optim.AdamW, "AdamW", dict(lr=0.001, weight_decay=0.01), 2, True),
    "adagrad": Update("Adagrad", optim.Adagrad, "Adagrad", dict(lr=0.01), 1, True),
    "adadelta": Update("Adadelta", optim.Adadelta, "Adadelta", dict(lr=1.0), 2, False),
    "adamax": Update("Adamax", optim.Adamax, "Adamax", dict(lr=0.002), 2, False),
    "radam": Update("RAdam", optim.RAdam, "RAdam", dict(lr=0.001), 2, False),
    "rprop": Update("Rprop", optim.Rprop, "Rprop", dict(lr=0.01), 2, False),
    "lion": Update("Lion", optim.Lion, None, dict(lr=1e-4), 1, False),
    "signum": Update("Signum", optim.Signum, None, dict(lr=0.01), 1, False),
}


def numpy_step(kind: str, params, grads, state, t: int) -> None:
    """The update with in-place numpy ufuncs (one temporary per tensor where unavoidable)."""
    for i, (p, g) in enumerate(zip(params, grads)):
        s = state[i]
        if kind == "sgd":
            b = s.setdefault("b", g.copy())
            if t > 1:
                b *= 0.9
                b += g
            p -= 0.01 * b
        elif kind in NUMPY_STEPS:
            NUMPY_STEPS[kind](p, g, s, t)
        elif kind == "rmsprop":
            v = s.setdefault("v", np.zeros_like(p))
            v *= 0.99
            v += 0.01 * g * g
            tmp = np.sqrt(v)
            tmp += 1e-8
            np.divide(g, tmp, out=tmp)
            tmp *= 0.01
            p -= tmp
        else:
            m, v = s.setdefault("m", np.zeros_like(p)), s.setdefault("v", np.zeros_like(p))
            if kind == "adamw":
                p *= 1 - 0.001 * 0.01
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
            tmp = np.sqrt(v)
            tmp /= np.sqrt(c2)
            tmp += 1e-8
            np.divide(m, tmp, out=tmp)
            tmp *= 0.001 / c1
            p -= tmp


def _adagrad(p, g, s, t):
    v = s.setdefault("sum", np.zeros_like(p))
    v += g * g
    tmp = np.sqrt(v)
    tmp += 1e-10
    np.divide(g, tmp, out=tmp)
    tmp *= 0.01
    p -= tmp


def _adadelta(p, g, s, t):
    v, d = s.setdefault("square_avg", np.zeros_like(p)), s.setdefault("acc_delta", np.zeros_like(p))
    v *= 0.9
    v += 0.1 * g * g
    u = np.sqrt(d + 1e-6)
    u /= np.sqrt(v + 1e-6)
    u *= g
    d *= 0.9
    d += 0.1 * u * u
    p -= u


def _adamax(p, g, s, t):
    m, n = s.setdefault("exp_avg", np.zeros_like(p)), s.setdefault("exp_inf", np.zeros_like(p))
    m *= 0.9
    m += 0.1 * g
    n *= 0.999
    np.maximum(n, np.abs(g) + 1e-8, out=n)
    tmp = m / n
    tmp *= 0.002 / (1 - 0.9 ** t)
    p -= tmp


def _radam(p, g, s, t):
    m, v = s.setdefault("exp_avg", np.zeros_like(p)), s.setdefault("exp_avg_sq", np.zeros_like(p))
    m *= 0.9
    m += 0.1 * g
    v *= 0.999
    v += 0.001 * g * g
    c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
    rho_inf = 2 / 0.001 - 1
    rho_t = rho_inf - 2 * t * 0.999 ** t / c2
    if rho_t > 5:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        tmp = np.sqrt(v)
        tmp += 1e-8
        np.divide(m, tmp, out=tmp)
        tmp *= 0.001 * rect * c2 ** 0.5 / c1
        p -= tmp
    else:
        p -= 0.001 / c1 * m


def _rprop(p, g, s, t):
    prev, size = s.setdefault("prev", np.zeros_like(p)), s.setdefault("step_size", np.full_like(p, 0.01))
    agreement = g * prev
    size *= np.where(agreement > 0, np.float32(1.2), np.where(agreement < 0, np.float32(0.5), np.float32(1)))
    np.clip(size, 1e-6, 50, out=size)
    np.copyto(prev, np.where(agreement < 0, np.float32(0), g))
    p -= np.sign(prev) * size


def _lion(p, g, s, t):
    m = s.setdefault("exp_avg", np.zeros_like(p))
    p -= 1e-4 * np.sign(0.9 * m + 0.1 * g)
    m *= 0.99
    m += 0.01 * g


def _signum(p, g, s, t):
    m = s.setdefault("momentum_buffer", np.zeros_like(p))
    m *= 0.9
    m += 0.1 * g
    p -= 0.01 * np.sign(m)


NUMPY_STEPS = {"adagrad": _adagrad, "adadelta": _adadelta, "adamax": _adamax, "radam": _radam, "rprop": _rprop,
               "lion": _lion, "signum": _signum}  # numpy_step's update per optimizer added in issue 11


def stream(buffer: np.ndarray, pool: ThreadPoolExecutor, threads: int) -> Callable[[], None]:
    """An in-place multiply over ``buffer`` split between threads (numpy releases the GIL)."""
    parts = np.array_split(buffer, threads)
    factor = np.float32(1.0000001)

    def run():
        pending = [pool.submit(np.multiply, part, factor, out=part) for part in parts[1:]]
        np.multiply(parts[0], factor, out=parts[0])
        for future in pending:
            future.result()
    return run


def split(n: int, tensors: int) -> list[int]:
    """``tensors`` sizes summing to ``n``, unequal (as real models are)."""
    weights = np.linspace(1, 3, tensors)
    sizes = np.floor(weights / weights.sum() * n).astype(int)
    sizes[-1] += n - sizes.sum()
    return sizes.tolist()


def peers(kind: str, n: int, tensors: int, threads: int, chunks: list[int | None]) -> dict[str, Callable[[], None]]:
    """A step function per peer, each on its own copy of the same data; graphopt once per row
    length in ``chunks`` (None: its default), the first named ``graphopt``."""
    update = UPDATES[kind]
    rng = np.random.default_rng(0)
    sizes = split(n, tensors)
    grads = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    runs: dict[str, Callable[[], None]] = {}

    def graphopt_step(sizes: list[int], grads: list[np.ndarray], chunk: int | None,
                      fused: bool | None = None) -> Callable[[], None]:
        params = [graphopt.Parameter(np.zeros(s, np.float32)) for s in sizes]
        runtime = Runtime(threads=threads, fused=fused, **({} if chunk is None else {"chunk_size": chunk}))
        opt = update.graphopt(params, runtime=runtime, **update.kwargs)
        for p, g in zip(params, grads):
            p.grad = g  # copied into the optimizer's gradient buffer once
        return opt.step

    for k, chunk in enumerate(chunks):
        runs["graphopt" if k == 0 else f"graphopt-K{chunk}"] = graphopt_step(sizes, grads, chunk)
    if tensors > 1:  # the same parameters as one tensor, so that the two compare within one run
        runs["graphopt-1-tensor"] = graphopt_step([n], [np.concatenate(grads)], chunks[0])
    if runs_fused(Runtime()):  # graphopt above runs its fused kernels: the standard operators too
        runs["graphopt-standard"] = graphopt_step(sizes, grads, chunks[0], fused=False)

    np_params, np_state, counter = [np.zeros(s, np.float32) for s in sizes], [{} for _ in sizes], [0]

    def numpy_run():
        counter[0] += 1
        numpy_step(kind, np_params, grads, np_state, counter[0])
    runs["numpy"] = numpy_run

    if torch is not None and update.torch_name is not None:
        torch.set_num_threads(threads)
        for variant in ("foreach", "fused"):
            if variant == "fused" and not update.fused:
                continue
            tparams = [torch.zeros(s, requires_grad=True) for s in sizes]
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(g.copy())
            topt = getattr(torch.optim, update.torch_name)(tparams, **update.kwargs, **{variant: True})
            runs[f"torch-{variant}"] = topt.step
    return runs


def measure(runs: dict[str, Callable[[], None]], rounds: int, steps: int, progress: Callable[[str], None]):
    """Interleaved rounds: per round, each peer in turn waits ``SETTLE_S``, runs one untimed step,
    then ``steps`` timed ones; returns ms per step per round.

    The wait, the untimed step and a new random order each round keep a peer from paying for the
    one before it: torch's OpenMP threads (libgomp spins up to 300,000 times before it sleeps) and
    ONNX Runtime's thread pools keep spinning on the cores for a while after their work is done,
    and the previous peer's data is in the caches.
    """
    for run in runs.values():
        run()  # warm up: compile, first-touch
    times = {name: [] for name in runs}
    shuffle = np.random.default_rng(0)
    for r in range(rounds):
        for name in shuffle.permutation(list(runs)):
            run = runs[name]
            progress(f"round {r + 1}/{rounds} {name}")
            time.sleep(SETTLE_S)
            run()
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return times


SETTLE_S = 0.02  # seconds before each peer's turn: the previous peer's threads stop spinning and sleep


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(samples)), "min_ms": float(min(samples)), "max_ms": float(max(samples))}


def extra_memory_per_param(kind: str, n: int, threads: int) -> float:
    """Resident bytes per parameter beyond params, grads and state.

    Two fresh processes run the same optimizer for ``n`` and for a tiny size; the
    difference of their resident sets, per parameter, less the 4-byte params, grads
    and state slots, is what the optimizer adds (fixed costs such as sessions cancel).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = """
import sys, numpy as np, graphopt
from tools.bench import UPDATES, rss
from graphopt.runtime import Runtime
u, n = UPDATES[sys.argv[1]], int(sys.argv[2])
p = graphopt.Parameter(np.zeros(n, np.float32))
opt = u.graphopt([p], runtime=Runtime(threads=int(sys.argv[3])), **u.kwargs)
p.grad = np.ones(n, np.float32)
for _ in range(3):
    opt.step()
print(rss())
"""
    small = 1 << 16

    def resident(size: int) -> int:
        command = [sys.executable, "-c", code, kind, str(size), str(threads)]
        return int(subprocess.check_output(command, env=dict(os.environ, PYTHONPATH=root), cwd=root))

    per_param = (resident(n) - resident(small)) / (n - small)
    return per_param - 4 * (2 + UPDATES[kind].slots)


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_time(tensors: int, threads: int) -> dict[str, float]:
    """Seconds to construct Adam over ``tensors`` tensors and run its first step (graph build + compile)."""
    sizes = split(tensors * 1000, tensors)
    params = [graphopt.Parameter(np.zeros(s, np.float32)) for s in sizes]
    start = time.perf_counter()
    opt = optim.Adam(params, runtime=Runtime(threads=threads))
    constructed = time.perf_counter()
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    assigned = time.perf_counter()
    opt.step()
    first = time.perf_counter()
    opt.step()
    second = time.perf_counter()
    return {"construct_s": constructed - start, "first_step_s": first - assigned, "later_step_s": second - first,
            "build_and_compile_s": (constructed - start) + (first - assigned) - (second - first)}


def first_build_time(threads: int) -> float:
    """`build_time`'s build + compile in a fresh process (it includes ONNX Runtime's start-up)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"from tools.bench import build_time; print(build_time(1000, {threads})['build_and_compile_s'])"
    return float(subprocess.check_output([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=root),
                                         cwd=root))


def fused_build_times(threads: int) -> dict[str, float]:
    """Seconds to an Adam optimizer's first step in a fresh process whose fused kernel is built into an
    empty cache folder, then in another fresh process that finds it there (start-up not counted)."""
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import time, numpy as np, graphopt; from graphopt.runtime import Runtime; "
            "p = graphopt.Parameter(np.zeros(1 << 20, np.float32)); p.grad = np.ones(1 << 20, np.float32); "
            f"start = time.perf_counter(); graphopt.optim.Adam([p], runtime=Runtime(threads={threads})).step(); "
            "print(time.perf_counter() - start)")
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-cache-") as cache:
        env = dict(os.environ, PYTHONPATH=root, GRAPHOPT_CACHE=cache)
        first, cached = (float(subprocess.check_output([sys.executable, "-c", code], env=env, cwd=root))
                         for _ in range(2))
    return {"first_step_empty_cache_s": first, "first_step_cached_s": cached}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(text[-1], 1)
    return int(float(text.rstrip("KMG")) * scale)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,16M,64M", help="parameter counts, e.g. 1M,16M,64M")
    parser.add_argument("--tensors", default="1,200", help="tensor counts the parameters are split into")
    parser.add_argument("--optimizers", default="sgd,rmsprop,adam,adamw", help=",".join(UPDATES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per peer per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", default=None,
                        help="graphopt's row length (default: its own); several, comma-separated, compare "
                             "row lengths side by side (the first is the one the ratios use)")
    parser.add_argument("--no-memory", action="store_true", help="skip the resident-memory measurement")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--sections", default="steps,training",
                        help="steps (optimizer steps), training, zoo (torch models), optimizers (every optimizer); "
                             "the last two are not in the default")
    parser.add_argument("--opt-size", default="4M", help="the optimizers section's parameter count")
    parser.add_argument("--opt-tensors", type=int, default=16, help="the optimizers section's tensor count")
    parser.add_argument("--opt-names", default=None, help="the optimizers to time, comma-separated (default: all)")
    parser.add_argument("--zoo", default=None, help="the zoo models to time, comma-separated (default: all)")
    parser.add_argument("--mlp", default="784,1024,1024,10", help="the training benchmark's layer widths")
    parser.add_argument("--batch", type=int, default=64, help="the training benchmark's batch size")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    chunks = [None] if args.chunk is None else [int(c) for c in args.chunk.split(",")]

    kinds = args.optimizers.split(",")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.tensors.split(",")]
    configs = [(k, n, c) for n in sizes for k in kinds for c in counts] if "steps" in sections else []
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                           "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
                           "onnxruntime": __import__("onnxruntime").__version__, "graphopt": graphopt.__version__},
               "command": " ".join([os.path.basename(sys.executable), "tools/bench.py", *(argv or sys.argv[1:])]),
               "steps": [], "stream": {}}

    def progress(text):
        sys.stderr.write(f"\r\033[K[{index + 1}/{len(configs)}] {text}")
        sys.stderr.flush()

    buffers = {}
    pool = ThreadPoolExecutor(max_workers=max(1, args.threads - 1))
    for index, (kind, n, count) in enumerate(configs):
        progress(f"{UPDATES[kind].name} N={n} tensors={count}: setting up")
        runs = peers(kind, n, count, args.threads, chunks)
        if n not in buffers:
            buffers[n] = np.ones(n, np.float32)
        runs["stream"] = stream(buffers[n], pool, args.threads)
        times = measure(runs, args.rounds, args.steps, lambda t: progress(f"{UPDATES[kind].name} N={n} "
                                                                            f"tensors={count}: {t}"))
        results["stream"][str(n)] = summary(times.pop("stream"))
        results["steps"].append({"optimizer": UPDATES[kind].name, "n": n, "tensors": count,
                                 "bytes_per_param": UPDATES[kind].bytes_per_param,
                                 "peers": {name: summary(t) for name, t in times.items()}})
        del runs
    index = len(configs) - 1
    if "training" in sections:
        dims = [int(d) for d in args.mlp.split(",")]
        progress(f"training iteration, MLP {args.mlp} batch {args.batch}")
        runs = mlp_iteration_peers(dims, args.batch, args.threads)
        times = measure(runs, args.rounds, max(args.steps, 5), lambda t: progress(f"training iteration: {t}"))
        results["training_iteration"] = {"mlp": dims, "batch": args.batch, "default": default_peer(),
                                         "peers": {name: summary(t) for name, t in times.items()}}
        progress("build and compile the ResNet-50 training step")
        results["resnet50_build"] = resnet50_build_time(args.threads)
    if "zoo" in sections:
        results["zoo"] = zoo_times(args, progress)
    if "optimizers" in sections:
        results["optimizers"] = optimizer_times(args, progress)
    if "steps" in sections:
        progress("build and compile for 1000 tensors")
        results["build_1000_tensors"] = build_time(1000, args.threads)  # sessions exist already: warm
        results["build_1000_tensors_first_in_process"] = first_build_time(args.threads)
        if runs_fused(Runtime()):
            progress("fused kernel: first step with an empty cache, then cached")
            results["fused_build"] = fused_build_times(args.threads)
    if not args.no_memory and "steps" in sections:
        n = max(s for s in sizes if s <= 16 * 2 ** 20) if min(sizes) <= 16 * 2 ** 20 else min(sizes)
        results["extra_bytes_per_param"] = {}
        for kind in kinds:
            progress(f"resident memory of {UPDATES[kind].name} at N={n}")
            results["extra_bytes_per_param"][UPDATES[kind].name] = extra_memory_per_param(kind, n, args.threads)
    sys.stderr.write("\r\033[K")
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def zoo_times(args, progress) -> dict[str, dict]:
    """Per zoo model, graphopt's and torch eager's ms per training step."""
    from tools.bench_zoo import zoo_peers
    from tools.zoo import CASES

    wanted = None if args.zoo is None else set(args.zoo.split(","))
    results = {}
    for case in CASES:
        if wanted is None or case.name in wanted:
            progress(f"zoo {case.name}: setting up")
            times = measure(zoo_peers(case, args.threads), args.rounds, max(args.steps, 5),
                            lambda t: progress(f"zoo {case.name}: {t}"))  # noqa: B023
            results[case.name] = {name: summary(t) for name, t in times.items()}
    return results


def optimizer_times(args, progress) -> dict[str, dict]:
    """Per optimizer: the path graphopt took and each peer's ms per step."""
    from tools.bench_optimizers import ENTRIES, optimizer_peers

    n, wanted = parse_size(args.opt_size), None if args.opt_names is None else set(args.opt_names.split(","))
    results = {"n": n, "tensors": args.opt_tensors, "optimizers": {}}
    for entry in ENTRIES:
        if wanted is None or entry.name in wanted:
            progress(f"optimizer {entry.name}: setting up")
            runs, path = optimizer_peers(entry, n, args.opt_tensors, args.threads)
            times = measure(runs, args.rounds, args.steps, lambda t: progress(f"optimizer {entry.name}: {t}"))  # noqa: B023
            results["optimizers"][entry.name] = {"path": path, "peers": {k: summary(t) for k, t in times.items()}}
    return results


def report(results: dict) -> str:
    lines = [f"graphopt benchmark: {results['command']}",
             "machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()), ""]
    for n, s in results["stream"].items():
        gbps = 8 * int(n) / s["median_ms"] / 1e6
        lines.append(f"memory stream N={int(n) / 2 ** 20:g}M: {s['median_ms']:.2f} ms ({gbps:.1f} GB/s in place)")
    if results["steps"]:
        lines += ["", "ms per step: median [min-max] over rounds; GB/s = bytes the update must move / median time",
                  f"{'optimizer':13s} {'N':>5s} {'tensors':>7s} {'peer':14s} {'ms/step':>22s} {'GB/s':>6s}  "
                  f"{'graphopt speedup':s}"]
    for row in results["steps"]:
        ours = row["peers"]["graphopt"]["median_ms"]
        for name, s in row["peers"].items():
            gbps = row["bytes_per_param"] * row["n"] / s["median_ms"] / 1e6
            ratio = "" if name == "graphopt" else f"{s['median_ms'] / ours:.2f}x"
            spread = f"{s['median_ms']:.2f} [{s['min_ms']:.2f}-{s['max_ms']:.2f}]"
            lines.append(f"{row['optimizer']:13s} {row['n'] / 2 ** 20:4g}M {row['tensors']:7d} {name:14s} "
                         f"{spread:>22s} {gbps:6.1f}  {ratio}")
    if "build_1000_tensors" in results:
        b = results["build_1000_tensors"]
        lines += ["", f"Adam over 1000 tensors: construct {b['construct_s']:.3f} s, build + compile "
                      f"{b['build_and_compile_s']:.3f} s (first step {b['first_step_s']:.3f} s, "
                      f"later {b['later_step_s']:.4f} s); "
                      "in a fresh process (ONNX Runtime start-up included) "
                      f"{results['build_1000_tensors_first_in_process']:.3f} s"]
    if "fused_build" in results:
        f = results["fused_build"]
        lines.append(f"Adam's first step in a fresh process, fused kernel built into an empty cache: "
                     f"{f['first_step_empty_cache_s']:.2f} s; found in the cache: {f['first_step_cached_s']:.2f} s")
    for name, extra in results.get("extra_bytes_per_param", {}).items():
        lines.append(f"{name}: resident memory beyond params, grads and state: {extra:.2f} bytes per parameter")
    if "training_iteration" in results:
        t = results["training_iteration"]
        default = t.get("default", "graphopt")
        ours = t["peers"][default]["median_ms"]
        lines += ["", f"training iteration (forward, cross-entropy, backward, Adam), MLP "
                      f"{'-'.join(map(str, t['mlp']))}, batch {t['batch']}: ms, median [min-max] "
                      f"(graphopt's default here: {default})"]
        for name, s in t["peers"].items():
            ratio = "" if name == default else f"  {default} is {s['median_ms'] / ours:.2f}x as fast"
            lines.append(f"  {name:28s} {s['median_ms']:8.2f} [{s['min_ms']:.2f}-{s['max_ms']:.2f}]{ratio}")
    if "resnet50_build" in results:
        r = results["resnet50_build"]
        lines += ["", f"ResNet-50 training step ({r['parameters'] / 1e6:.1f}M parameters, {r['forward_nodes']} "
                      f"forward nodes, {r['step_nodes']} in the step graph): Trainer set-up {r['setup_s']:.2f} s, "
                      f"build {r['build_s']:.2f} s, onnxruntime compile {r['compile_s']:.2f} s"]
    if "optimizers" in results:
        o = results["optimizers"]
        lines += ["", f"one step of each optimizer, {o['n'] / 2 ** 20:g}M float32 parameters in {o['tensors']} "
                      "tensors: ms, median [min-max]",
                  f"  {'optimizer':12s} {'path':11s} {'graphopt':>22s} {'torch for-loop':>22s} {'torch foreach':>22s}"]
        for name, row in o["optimizers"].items():
            cells = [_spread(row["peers"][k]) if k in row["peers"] else "-"
                     for k in ("graphopt", "torch-for-loop", "torch-foreach")]
            lines.append(f"  {name:12s} {row['path']:11s} " + " ".join(f"{c:>22s}" for c in cells))
    if "zoo" in results:
        lines += ["", "zoo (tools/zoo.py): one training step (forward, loss, backward, AdamW), ms, median [min-max]",
                  f"  {'model':28s} {'graphopt':>22s} {'torch eager':>22s} {'torch / graphopt':>17s}"]
        for name, peers in results["zoo"].items():
            ours, theirs = peers["graphopt"], peers["torch-eager"]
            lines.append(f"  {name:28s} {_spread(ours):>22s} {_spread(theirs):>22s} "
                         f"{theirs['median_ms'] / ours['median_ms']:16.2f}x")
    return "\n".join(lines)


def _spread(s: dict) -> str:
    return f"{s['median_ms']:.2f} [{s['min_ms']:.2f}-{s['max_ms']:.2f}]"


if __name__ == "__main__":
    main()
