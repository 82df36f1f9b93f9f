"""Step time and scaling efficiency of data-parallel training on 1, 2 and 4 processes, and its projection
to many machines from the measured costs (docs/SCALING.md).

    python tools/bench_scaling.py                          # MLP and ResNet-18, 1, 2, 4 processes, mpiexec
    python tools/bench_scaling.py --quick                  # smoke test: the MLP, small batches, few steps
    python tools/bench_scaling.py --models mlp --procs 1,2 --engine torch   # torchrun and gloo
    python tools/bench_scaling.py --json scaling.json      # also the measurements as JSON
    python tools/bench_scaling.py --project scaling.json   # the projection only, from a saved measurement
    python tools/bench_scaling.py --overlap off,1,4,16     # the step without overlap, and with buckets of 1, 4, 16 MiB

Each launch (``mpiexec -n N`` or ``torchrun --nproc-per-node N``) runs this file's worker, which trains each
model with the data-parallel Trainer (``Trainer(..., communicator=comm)``, `graphopt.distributed.training.
data_parallel_step`) on random data, SGD with momentum, for ``--warmup`` untimed then ``--steps`` timed steps,
in two settings:

* weak scaling: a fixed batch per process (``--batch``), so N processes train on N times the samples;
  efficiency ``T1 / TN``;
* strong scaling: a fixed global batch (``--global-batch``) split between the N processes;
  efficiency ``T1 / (N TN)``.

Each model runs in every ``--overlap`` setting, side by side in one launch: ``off``, forward and backward in one
ONNX Runtime call, then the gradient allreduces over whole buffers in 32 MiB pieces (``Trainer(overlap=False)``);
a size in MiB, the overlapped step in buckets of that size (`graphopt.distributed.overlap`; on one process its
stages still run, so the one-process row measures what the stages cost). A step's parts, on rank 0, each the
median over the timed steps: forward + backward (``trainer._gradients_into_buffers``: overlapped, the stages and
the starting of their buckets' allreduces, which run meanwhile on the progress thread), update
(``trainer._apply_accumulated``: the optimizer's step) and communication (the rest of the step: the gradient
allreduces left after the backward pass, the BatchNormalization statistics, the loss, and the wait for the
slowest process); every step starts after a barrier. The launches alternate over process counts for
``--rounds`` rounds (drift on a shared machine hits every count alike); the table reports the median over
rounds. ``N = 1`` runs the same data-parallel step on a world of one (its allreduces return at once).

Threads: each process gets ``cores // N`` (at least 1; ``--threads K``: K each): ``Runtime(threads=...)``,
the intra-op threads of every ONNX Runtime session (the Trainer's forward and backward included) and of the
update, and ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` /
``MKL_NUM_THREADS`` for numpy. More threads than cores oversubscribe them: the tool runs and says so. With
``cores // N`` the N processes share one process's cores, so the efficiencies' ideal is 1 / N and the
samples per second against one process's (ideal 1) is the measure of data parallelism's cost; with a fixed
``--threads`` every process has the same resources and the efficiencies' ideal is 1 (up to ``cores / K``
processes).

The ResNet-18 is the CIFAR variant for 32x32 inputs (3x3 stem, no max pooling, [2, 2, 2, 2] basic blocks,
11.2M parameters), built here with onnx.helper as tools/bench_training.py builds ResNet-50; the MLP is
tools/bench_training.py's (784-1024-1024-10, 1.9M parameters).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from graphopt.runtime import Runtime  # noqa: E402
from tools.bench_collectives import median_ms  # noqa: E402
from tools.bench_training import classifier_model, conv_bn_layers, mlp_model  # noqa: E402

MODES = ("weak", "strong")
PARTS = ("accumulate_ms", "communication_ms", "update_ms", "total_ms")


# -- models ------------------------------------------------------------------------------------------

def resnet18_cifar_model(rng: np.random.Generator, classes: int = 10) -> onnx.ModelProto:
    """ResNet-18 for 32x32 inputs (He et al. 2016's CIFAR stem: one 3x3 convolution, no max pooling):
    Conv + BatchNormalization pairs, 8 basic blocks of widths 64, 128, 256, 512 (two per stage, the first
    of stages 2-4 with stride 2 and a 1x1 projection shortcut), global average pooling, a ``classes``-way Gemm."""
    nodes, inits = [], []
    conv_bn = conv_bn_layers(rng, nodes, inits)

    x, c_in = conv_bn("x", "stem", 3, 64, 3), 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for b in range(2):
            name, stride = f"layer{stage + 1}.{b}", (2 if stage and not b else 1)
            h = conv_bn(x, f"{name}.conv1", c_in, width, 3, stride)
            h = conv_bn(h, f"{name}.conv2", width, width, 3, relu=False)
            shortcut = conv_bn(x, f"{name}.down", c_in, width, 1, stride, relu=False) if stride > 1 else x
            nodes.append(helper.make_node("Add", [h, shortcut], [f"{name}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
            x, c_in = f"{name}.out", width
    bound = 1 / np.sqrt(512)
    fc = rng.uniform(-bound, bound, (classes, 512)).astype(np.float32)
    return classifier_model("resnet18_cifar", nodes, inits, x, (3, 32, 32), fc)


@dataclass(frozen=True)
class ModelCase:
    """A benchmark model: how to build it, one sample's input shape, its classes, default batches."""

    build: Callable[[np.random.Generator], onnx.ModelProto]
    sample: tuple[int, ...]
    classes: int
    batch: int  # weak scaling: samples per process
    global_batch: int  # strong scaling: samples per step, split between the processes


MODELS = {
    "mlp": ModelCase(lambda rng: mlp_model([784, 1024, 1024, 10], rng), (784,), 10, 64, 256),
    "resnet18": ModelCase(resnet18_cifar_model, (3, 32, 32), 10, 8, 32),
}


# -- the worker (one process of a launch) -------------------------------------------------------------

def _timed(parts: dict[str, float], name: str, method: Callable) -> Callable:
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            parts[name] += time.perf_counter() - start
    return run


def timed_steps(trainer, comm, inputs: dict, labels: np.ndarray, warmup: int, steps: int):
    """``warmup`` untimed then ``steps`` timed data-parallel steps, each after a barrier; per timed step
    (forward + backward, communication, update, total) in seconds, and the bytes of each allreduce of one step.

    ``trainer._gradients_into_buffers`` and ``trainer._apply_accumulated`` are timed by wrapping them on the
    instance, the allreduces counted by wrapping ``comm.allreduce``; all three are restored afterwards."""
    from graphopt.distributed.training import data_parallel_step

    parts = {"accumulate": 0.0, "update": 0.0}
    messages: list[int] = []
    allreduce = comm.allreduce

    def counted(buffer, op="sum"):
        messages.append(int(buffer.nbytes))
        return allreduce(buffer, op)

    trainer._gradients_into_buffers = _timed(parts, "accumulate", trainer._gradients_into_buffers)  # noqa: SLF001
    trainer._apply_accumulated = _timed(parts, "update", trainer._apply_accumulated)  # noqa: SLF001
    comm.allreduce = counted
    rows, step_messages = [], []
    try:
        for i in range(warmup + steps):
            comm.barrier()
            parts.update(accumulate=0.0, update=0.0)
            messages.clear()
            start = time.perf_counter()
            data_parallel_step(trainer, inputs, labels)
            total = time.perf_counter() - start
            if not parts["accumulate"] or not parts["update"]:
                raise RuntimeError("bench_scaling: data_parallel_step no longer calls trainer._gradients_into_buffers "
                                   "and trainer._apply_accumulated; update the timing hooks in tools/bench_scaling.py")
            if i >= warmup:
                rows.append((parts["accumulate"], total - parts["accumulate"] - parts["update"], parts["update"],
                             total))
                step_messages = list(messages)
    finally:
        del trainer._gradients_into_buffers, trainer._apply_accumulated, comm.allreduce
    return np.array(rows), step_messages


def variant_name(name: str, bucket_mib: float | None) -> str:
    """A model's name in the results: the name itself without overlap, else with its bucket size."""
    return name if bucket_mib is None else f"{name}, overlap {bucket_mib:g} MiB"


def measure_model(name: str, comm, threads: int, args, bucket_mib: float | None = None) -> dict:
    """One model's weak and strong scaling steps on this process (rank 0's medians), the allreduce of its
    gradient bytes alone, and the time of a float32 addition over them (a reduction's arithmetic); overlapped in
    buckets of ``bucket_mib`` MiB, or (None) not."""
    import graphopt
    from graphopt import distributed, losses, optim

    case = MODELS[name]
    overlap = {"overlap": False} if bucket_mib is None else {"overlap": True,
                                                             "bucket_bytes": max(1, int(bucket_mib * 2 ** 20))}
    trainer = graphopt.Trainer(case.build(np.random.default_rng(0)), losses.cross_entropy("logits"),
                               optim.SGD(lr=0.01, momentum=0.9, runtime=Runtime(threads=threads)),
                               communicator=comm, **overlap)
    n = comm.world_size
    parameters = int(sum(p.data.size for p in trainer.parameters.values()))
    result = {"parameters": parameters, "gradient_bytes": 4 * parameters, "overlap_bucket_mib": bucket_mib,
              "modes": {}}
    for mode in args.modes:
        global_batch = (args.batch or case.batch) * n if mode == "weak" else (args.global_batch or case.global_batch)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((global_batch, *case.sample)).astype(np.float32)
        y = rng.integers(0, case.classes, global_batch).astype(np.int64)
        xs, ys = distributed.shard(x, comm), distributed.shard(y, comm)
        rows, messages = timed_steps(trainer, comm, {"x": xs}, ys, args.warmup, args.steps)
        every = comm.allgather(np.ascontiguousarray(rows[:, 0], np.float64)).reshape(n, -1)  # each rank's fwd+bwd
        entry = {"batch_per_process": len(ys), "global_batch": global_batch,
                 **{part: 1e3 * float(np.median(rows[:, k])) for k, part in enumerate(PARTS)},
                 "compute_spread_ms": 1e3 * float(np.median(every.max(0) - every.min(0))),
                 "allreduce_bytes": messages}
        if n == 1 and bucket_mib is None:  # the plain Trainer.step (no communicator): the data-parallel reference
            plain = trainer.communicator
            trainer.communicator = None
            trainer.step({"x": xs}, labels=ys)  # untimed: the one-call training step compiles here, if it runs
            entry["plain_step_ms"] = median_ms(comm, lambda: trainer.step({"x": xs}, labels=ys), args.steps)
            trainer.communicator = plain
        result["modes"][mode] = entry
    buffer = np.ones(parameters, np.float32)
    other = np.ones(parameters, np.float32)
    result["allreduce_alone_ms"] = median_ms(comm, lambda: comm.allreduce(buffer), max(3, args.steps))
    result["add_ms"] = median_ms(comm, lambda: np.add(buffer, other, out=buffer), max(3, args.steps))
    return result


def worker(args) -> None:
    from graphopt import distributed

    comm = distributed.init(args.engine)
    threads = args.threads
    results = {"world_size": comm.world_size, "engine": comm.engine, "threads": threads, "models": {}}
    for name in args.models:
        for bucket_mib in args.overlap:
            results["models"][variant_name(name, bucket_mib)] = measure_model(name, comm, threads, args, bucket_mib)
    if comm.rank == 0:
        with open(args.worker, "w") as f:
            json.dump(results, f)
    comm.barrier()
    if hasattr(comm, "close"):
        comm.close()


# -- the launcher -------------------------------------------------------------------------------------

def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(processes: int, available: int) -> int:
    return max(1, available // processes)


def launch_command(engine: str, processes: int, worker_args: list[str]) -> list[str]:
    """The launcher's command line for ``processes`` workers on this machine."""
    if engine == "mpi":
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
        if mpiexec is None:
            raise RuntimeError("bench_scaling: mpiexec not found (pip install 'graphopt[distributed]'), "
                               "or use --engine torch")
        return [mpiexec, "-n", str(processes), "-host", "127.0.0.1", sys.executable, "-m", "tools.bench_scaling",
                *worker_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "tools.bench_scaling", *worker_args]


def launch(args, processes: int, threads: int, folder: str, log: Callable[[str], None]) -> dict:
    out = os.path.join(folder, f"n{processes}.json")
    worker_args = ["--worker", out, "--engine", args.engine, "--threads", str(threads), "--models",
                   ",".join(args.models), "--modes", ",".join(args.modes), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--overlap", ",".join(
                       "off" if b is None else f"{b:g}" for b in args.overlap)]
    worker_args += ["--batch", str(args.batch)] if args.batch else []
    worker_args += ["--global-batch", str(args.global_batch)] if args.global_batch else []
    command = launch_command(args.engine, processes, worker_args)
    numbers = {k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    launcher = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")  # this process's own, if any
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **numbers)
    log(f"launch: OMP_NUM_THREADS={threads} " + shlex.join(command))
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode:
        raise RuntimeError(f"bench_scaling: the launch of {processes} processes failed ({result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def combine(rounds: list[dict]) -> dict:
    """One launch's results per round, combined: every time the median over rounds (and the total's range)."""
    first = rounds[0]
    combined = {k: first[k] for k in ("world_size", "engine", "threads")}
    combined["rounds"] = len(rounds)
    combined["models"] = {}
    for name, model in first["models"].items():
        runs = [r["models"][name] for r in rounds]
        entry = {k: model[k] for k in ("parameters", "gradient_bytes", "overlap_bucket_mib")}
        for key in ("allreduce_alone_ms", "add_ms"):
            entry[key] = float(np.median([r[key] for r in runs]))
        entry["modes"] = {}
        for mode, values in model["modes"].items():
            per_round = [r["modes"][mode] for r in runs]
            merged = {k: values[k] for k in ("batch_per_process", "global_batch", "allreduce_bytes")}
            for key in (*PARTS, "compute_spread_ms", "plain_step_ms"):
                if key in values:
                    merged[key] = float(np.median([p[key] for p in per_round]))
            merged["total_range_ms"] = [min(p["total_ms"] for p in per_round), max(p["total_ms"] for p in per_round)]
            entry["modes"][mode] = merged
        combined["models"][name] = entry
    return combined


def efficiencies(results: dict) -> None:
    """Adds each row's scaling efficiency against the one-process row, T1 / TN (weak), T1 / (N TN) (strong),
    which counts each process as a machine of its own; and its samples per second over the one-process
    row's, whose ideal is 1 where the processes share the one process's cores (threads = cores / N)."""
    runs = results["runs"]
    if "1" not in runs:
        return
    for n, run in runs.items():
        for name, model in run["models"].items():
            for mode, row in model["modes"].items():
                one = runs["1"]["models"][name]["modes"][mode]
                row["efficiency"] = one["total_ms"] / row["total_ms"] / (1 if mode == "weak" else int(n))
                row["throughput_ratio"] = (row["global_batch"] / row["total_ms"]) / (one["global_batch"] /
                                                                                     one["total_ms"])


def measure(args) -> dict:
    available = cores()
    results = {"command": args.command, "engine": args.engine, "cores": available, "runs": {}, "notes": []}
    threads = {n: args.threads or threads_for(n, available) for n in args.procs}
    for n in args.procs:
        if n * threads[n] > available:
            results["notes"].append(f"{n} processes x {threads[n]} threads on {available} cores: oversubscribed; "
                                    "its times measure contention for the cores, not scaling")
    if args.threads is None:
        results["notes"].append("threads = cores / processes: the processes share one process's cores, so the "
                                "ideal efficiency is 1 / N; samples/s vs 1 process (ideal 1) measures the cost")
    for note in results["notes"]:
        print(f"note: {note}", file=sys.stderr)
    by_count: dict[int, list[dict]] = {n: [] for n in args.procs}
    with tempfile.TemporaryDirectory(prefix="graphopt-scaling-") as folder:
        for r in range(args.rounds):
            order = args.procs[r % len(args.procs):] + args.procs[:r % len(args.procs)]  # rotated each round
            for n in order:
                print(f"round {r + 1}/{args.rounds}: {n} processes", file=sys.stderr)
                by_count[n].append(launch(args, n, threads[n], folder,
                                          lambda text: print(text, file=sys.stderr)))
    results["runs"] = {str(n): combine(rounds) for n, rounds in by_count.items()}
    efficiencies(results)
    return results


# -- the report ---------------------------------------------------------------------------------------

def report(results: dict) -> str:
    lines = [f"command: `{results['command']}`", "",
             f"{results['engine']} engine, {results['cores']} cores; ms per step on rank 0, median over timed steps, "
             "then over rounds (total: [min-max] over rounds)", ""]
    lines += [f"note: {n}" for n in results["notes"]] + ([""] if results["notes"] else [])
    lines += ["| model | scaling | processes | threads each | batch / process | global batch | fwd+bwd | "
              "communication | update | total | samples/s | samples/s vs 1 process | efficiency |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = next(iter(results["runs"].values()))["models"]
    for name in names:
        for mode in MODES:
            for n, run in results["runs"].items():
                row = run["models"][name]["modes"].get(mode)
                if row is None:
                    continue
                low, high = row["total_range_ms"]
                eff = f"{row['throughput_ratio']:.2f} | {row['efficiency']:.2f}" if "efficiency" in row else "- | -"
                lines.append(f"| {name} | {mode} | {n} | {run['threads']} | {row['batch_per_process']} | "
                             f"{row['global_batch']} | {row['accumulate_ms']:.1f} | {row['communication_ms']:.1f} | "
                             f"{row['update_ms']:.1f} | {row['total_ms']:.1f} [{low:.1f}-{high:.1f}] | "
                             f"{1e3 * row['global_batch'] / row['total_ms']:.0f} | {eff} |")
    lines += ["", "| model | parameters | gradient MB | allreduces per step (bytes) | processes | "
                  "allreduce of the gradients alone, ms | bus bandwidth GB/s |", "|---|---:|---:|---|---:|---:|---:|"]
    for name in names:
        for n, run in results["runs"].items():
            model = run["models"][name]
            sizes = next(iter(model["modes"].values()))["allreduce_bytes"]
            s, t, p = model["gradient_bytes"], model["allreduce_alone_ms"], int(n)
            bus = f"{2 * (p - 1) / p * s / t / 1e6:.2f}" if p > 1 else "-"
            lines.append(f"| {name} | {model['parameters'] / 1e6:.2f}M | {s / 1e6:.1f} | {_messages(sizes)} | "
                         f"{n} | {t:.1f} | {bus} |")
    one = results["runs"].get("1")
    if one is not None:
        checks = [f"{name} {mode} {row['plain_step_ms']:.1f} ms" for name, model in one["models"].items()
                  for mode, row in model["modes"].items() if "plain_step_ms" in row]
        lines += ["", "plain Trainer.step, one process (the data-parallel path's reference): " + ", ".join(checks)]
    return "\n".join(lines)


def _messages(sizes: list[int]) -> str:
    small = [s for s in sizes if s < 65536]
    large = [s for s in sizes if s >= 65536]
    text = f"{len(sizes)}: " + " + ".join(f"{s / 2 ** 20:.1f} MiB" for s in large)
    return text + (f" + {len(small)} under 64 KiB ({sum(small)} B)" if small else "")


# -- the projection -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """A network between machines: its line rate in Gb/s and the latency α of one message in µs."""

    name: str
    gbps: float
    alpha_us: float


LINKS = (Link("10 GbE, TCP", 10, 50), Link("25 GbE, TCP", 25, 25), Link("100 Gb/s RDMA (InfiniBand/RoCE)", 100, 3))
SMALL = 2048  # bytes: MPICH's allreduce takes recursive doubling up to this size, Rabenseifner's above


def allreduce_time(size: int, p: int, alpha: float, beta: float, gamma: float, algorithm: str) -> float:
    """Seconds for an allreduce of ``size`` bytes over ``p`` processes (Thakur, Rabenseifner & Gropp 2005):
    ``alpha`` s per message, ``beta`` s per byte sent, ``gamma`` s per byte reduced.

    ring (Patarasuk & Yuan 2009): ``2 (p-1) alpha + 2 (p-1)/p size beta + (p-1)/p size gamma``;
    rabenseifner (reduce-scatter by recursive halving + allgather by recursive doubling, MPICH's long-message
    algorithm): ``2 log2(p) alpha + 2 (p-1)/p size beta + (p-1)/p size gamma``;
    both take recursive doubling up to `SMALL` bytes: ``log2(p) (alpha + size beta + size gamma)``."""
    if p == 1:
        return 0.0
    steps = math.ceil(math.log2(p))
    if size <= SMALL:
        return steps * (alpha + size * (beta + gamma))
    share = (p - 1) / p * size
    latency = 2 * (p - 1) * alpha if algorithm == "ring" else 2 * steps * alpha
    return latency + 2 * share * beta + share * gamma


def project(results: dict, machines=(8, 64, 256), links=LINKS, goodput: float = 0.9, speedup: float = 1.0,
            mode: str = "weak", global_batch: int = 4096) -> list[dict]:
    """Projected step time and efficiency on ``machines`` machines, one process each, from the measured
    one-process run (`costs`): forward + backward as a function of the batch, the update, the allreduces of
    one step (their sizes as measured) and the cost of adding float32 (``gamma``); compute and update divided
    by ``speedup`` (machines that much faster than the one measured; ``gamma`` is not). Each link's bandwidth
    is its line rate x ``goodput``. Weak scaling keeps the measured batch per machine; strong scaling splits
    ``global_batch``.

    Per row: the step as graphopt runs it (``fwd+bwd + allreduces + update``, no overlap); with the gradient
    allreduces overlapped with the backward pass, in the best buckets (`_exposed`; backward taken as
    2/3 of forward + backward, the 4N of 6N FLOPs per sample of Kaplan et al. 2020; exposed: what exceeds
    it, and at least the last bucket, whose gradients the backward pass computes last); and with ZeRO-1
    (reduce-scatter + allgather: the same bytes as the allreduce; the update on 1/p of the parameters)."""
    rows = []
    for name, model in results["runs"]["1"]["models"].items():
        if model.get("overlap_bucket_mib") is not None:  # the projection models overlap itself, from the plain step
            continue
        cost = costs(model, speedup)
        if mode == "weak" and cost["weak_batch"] is None:
            continue
        batch = cost["weak_batch"] if mode == "weak" else None
        t1 = cost["update"] + cost["compute"](batch if mode == "weak" else global_batch)
        for link in links:
            alpha, beta = link.alpha_us * 1e-6, 1 / (link.gbps * 1e9 / 8 * goodput)
            for p in machines:
                if mode == "strong" and p > global_batch:
                    continue
                compute = cost["compute"](batch if mode == "weak" else global_batch / p)
                gamma = cost["gamma"]
                grad = {a: sum(allreduce_time(s, p, alpha, beta, gamma, a) for s in cost["gradient"])
                        for a in ("ring", "rabenseifner")}
                small = sum(allreduce_time(s, p, alpha, beta, gamma, "ring") for s in cost["small"])
                exposed, bucket = _exposed(sum(cost["gradient"]), 2 / 3 * compute, p, alpha, beta, gamma)
                exposed += small
                update = cost["update"]
                steps = {"none": compute + grad["ring"] + small + update, "overlap": compute + exposed + update,
                         "zero1": compute + grad["ring"] + small + update / p}
                scale = 1 if mode == "weak" else p
                rows.append({"model": name, "mode": mode, "link": link.name, "machines": p,
                             "batch_per_machine": batch if mode == "weak" else global_batch / p,
                             "overlap_bucket_mib": bucket / 2 ** 20,
                             "compute_ms": 1e3 * compute, "update_ms": 1e3 * update, "ring_ms": 1e3 * grad["ring"],
                             "rabenseifner_ms": 1e3 * grad["rabenseifner"], "small_ms": 1e3 * small,
                             **{f"step_{k}_ms": 1e3 * v for k, v in steps.items()},
                             **{f"efficiency_{k}": t1 / v / scale for k, v in steps.items()}})
    return rows


def costs(model: dict, speedup: float = 1.0) -> dict:
    """The one-process costs a projection starts from, in seconds (compute and update divided by ``speedup``):
    ``compute(batch)``, forward + backward: a measured batch's median, others on the line ``a + c batch``
    through the weak and strong points (proportional to the batch with one point, or where noise makes ``a``
    or ``c`` negative); ``update``, the smaller of the two settings' medians (it does not depend on the
    batch); ``gamma``, seconds per byte of a float32 addition; the step's allreduce sizes, split at `SMALL` bytes."""
    points = sorted({(row["batch_per_process"], row["accumulate_ms"] * 1e-3 / speedup)
                     for row in model["modes"].values()})
    (b0, t0), (b1, t1) = points[0], points[-1]
    slope = (t1 - t0) / (b1 - b0) if b1 != b0 else t1 / b1
    fixed = t0 - slope * b0
    if fixed < 0 or slope < 0:  # noise: proportional to the batch, through the larger point
        fixed, slope = 0.0, t1 / b1
    sizes = next(iter(model["modes"].values()))["allreduce_bytes"]
    measured = {row["batch_per_process"]: row["accumulate_ms"] * 1e-3 / speedup for row in model["modes"].values()}
    return {"compute": lambda batch: measured.get(batch, fixed + slope * batch), "fixed": fixed, "per_sample": slope,
            "update": min(row["update_ms"] for row in model["modes"].values()) * 1e-3 / speedup,
            "gamma": model["add_ms"] * 1e-3 / model["gradient_bytes"],  # memory-bound: not sped up
            "weak_batch": model["modes"]["weak"]["batch_per_process"] if "weak" in model["modes"] else None,
            "bytes": model["gradient_bytes"], "gradient": [s for s in sizes if s > SMALL],
            "small": [s for s in sizes if s <= SMALL]}


def _exposed(size: int, backward: float, p: int, alpha: float, beta: float, gamma: float) -> tuple[float, int]:
    """Seconds of gradient allreduce left after the backward pass, when buckets start as soon as their gradients
    are ready: the total beyond ``backward``, at least the last bucket's; and the bucket size (a power of two
    from 1 MiB, or the whole buffer) that leaves the least. Small buckets overlap more but pay more latency."""
    options = []
    bucket = 1 << 20
    while True:
        bucket = min(bucket, size)
        full, rest = divmod(size, bucket)
        sizes = [bucket] * full + ([rest] if rest else [])
        total = sum(allreduce_time(s, p, alpha, beta, gamma, "ring") for s in sizes)
        options.append((max(total - backward, allreduce_time(sizes[-1], p, alpha, beta, gamma, "ring")), bucket))
        if bucket == size:
            return min(options)
        bucket *= 2


def projection_report(projection: dict) -> str:
    lines = ["", f"projection: one process per machine, each computing {projection['speedup']:g}x as fast as the "
                 f"one-process run measured; bandwidth = line rate x {projection['goodput']:g}; strong scaling's "
                 f"global batch {projection['global_batch']}; overlap: in the buckets (MiB) that hide the most; "
                 "ms per step",
             "| model | scaling | network | machines | batch / machine | fwd+bwd | gradient allreduce ring "
             "(Rabenseifner) | small allreduces | update | step | efficiency | with overlap (bucket) | with ZeRO-1 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in projection["rows"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['link']} | {r['machines']} | "
                     f"{r['batch_per_machine']:g} | {r['compute_ms']:.1f} | "
                     f"{r['ring_ms']:.1f} ({r['rabenseifner_ms']:.1f}) | {r['small_ms']:.2f} | {r['update_ms']:.1f} | "
                     f"{r['step_none_ms']:.1f} | {r['efficiency_none']:.2f} | {r['efficiency_overlap']:.2f} "
                     f"({r['overlap_bucket_mib']:.3g}) | "
                     f"{r['efficiency_zero1']:.2f} |")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def _links(text: str | None) -> tuple[Link, ...]:
    if text is None:
        return LINKS
    pairs = [item.split(":") for item in text.split(",")]
    return tuple(Link(f"{float(g):g} Gb/s, {float(a):g} µs", float(g), float(a)) for g, a in pairs)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,resnet18", help=",".join(MODELS))
    parser.add_argument("--procs", default="1,2,4", help="process counts, e.g. 1,2,4")
    parser.add_argument("--modes", default="weak,strong", help="weak (fixed batch per process), strong (fixed "
                                                              "global batch)")
    parser.add_argument("--engine", default="mpi", choices=("mpi", "torch"), help="mpiexec + MPI, or torchrun + gloo")
    parser.add_argument("--batch", type=int, default=None, help="weak scaling's batch per process (default: "
                        + ", ".join(f"{k} {m.batch}" for k, m in MODELS.items()) + ")")
    parser.add_argument("--global-batch", type=int, default=None, help="strong scaling's global batch (default: "
                        + ", ".join(f"{k} {m.global_batch}" for k, m in MODELS.items()) + ")")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, first touch)")
    parser.add_argument("--rounds", type=int, default=3, help="launches per process count, alternating")
    parser.add_argument("--quick", action="store_true", help="smoke test: the MLP, batch 16 / global 32, "
                        "1 round of 1 + 3 steps (overrides those options)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launch")
    parser.add_argument("--json", default=None, help="write the measurements (and projection) here")
    parser.add_argument("--project", nargs="?", const="", default=None, metavar="JSON",
                        help="also print the projection to many machines; with a file, only project its measurements "
                        "(of --models, in --modes)")
    parser.add_argument("--machines", default="8,64,256", help="the projection's machine counts")
    parser.add_argument("--links", default=None, help="the projection's networks as Gb/s:latency-µs pairs, e.g. "
                        "10:50,100:3 (default: " + ", ".join(f"{k.gbps:g}:{k.alpha_us:g}" for k in LINKS) + ")")
    parser.add_argument("--goodput", type=float, default=0.9, help="the projection's achieved share of line rate")
    parser.add_argument("--speedup", type=float, default=1.0,
                        help="the projection's machines compute this many times as fast as the measured process")
    parser.add_argument("--project-global-batch", type=int, default=4096, help="the projection's strong scaling "
                        "global batch")
    parser.add_argument("--overlap", default="off,4", help="settings of the gradient allreduce, side by side: off "
                        "(after the backward pass) and bucket sizes in MiB of the overlapped step, e.g. off,1,4")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run as a worker
    parser.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes, "
                        "at least 1); 1 gives every process the same resources, so efficiency's ideal is 1")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.global_batch = "mlp", 16, 32
        args.steps, args.warmup, args.rounds = 3, 1, 1
    args.models = args.models.split(",")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}: choose from {list(MODELS)}")
    args.modes = args.modes.split(",")
    if not set(args.modes) <= set(MODES):
        parser.error(f"--modes: choose from {MODES}")
    args.procs = _ints(args.procs)
    try:
        args.overlap = [None if item == "off" else float(item) for item in args.overlap.split(",")]
    except ValueError:
        parser.error(f"--overlap: 'off' or bucket sizes in MiB, got {args.overlap!r}")
    if any(b is not None and b <= 0 for b in args.overlap):
        parser.error("--overlap: bucket sizes must be positive")
    args.command = shlex.join(["python", "tools/bench_scaling.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv=None) -> dict | None:
    args = parse(argv)
    if args.worker:
        worker(args)
        return None
    if args.project:
        with open(args.project) as f:
            results = json.load(f)
    else:
        results = measure(args)
        print(report(results))
    if args.project is not None:
        results["projection"] = {"goodput": args.goodput, "speedup": args.speedup,
                                 "global_batch": args.project_global_batch, "rows": [
            row for mode in args.modes for row in project(results, _ints(args.machines), links=_links(args.links),
                                                          goodput=args.goodput, speedup=args.speedup, mode=mode,
                                                          global_batch=args.project_global_batch)
            if row["model"] in args.models]}
        print(projection_report(results["projection"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
