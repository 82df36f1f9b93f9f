"""How much of the gradient allreduce the overlapped data-parallel step hides, on a simulated network.

    python tools/bench_overlap.py                                  # MLP and ResNet-18, 10 and 100 Gb/s links
    python tools/bench_overlap.py --models mlp --links 25:25 --buckets 1,4,16 --machines 8

On one machine the processes of tools/bench_scaling.py reduce through shared memory: the copies and additions
take the same cores as the compute, so that measurement cannot tell what overlap hides on a network, where the
network card moves the bytes while the cores compute. Here one process trains as one of ``--machines``
machines whose peers hold the same gradients (`SimulatedLink`): an allreduce *waits* (sleeps, using no core)
for the ring algorithm's time on the link, ``2 (p-1) alpha + 2 (p-1)/p n / B`` (tools/bench_scaling.py's
`allreduce_time`, without the reduction's arithmetic), then holds the sum. The compute is real: the Trainer's
stages on all this machine's cores, the update, the Python between them.

Per model and link, side by side in one run (``--rounds`` rounds, the settings' order rotated each round), the
step without overlap (``Trainer(overlap=False)``) and overlapped in buckets of each ``--buckets`` MiB; per setting
the medians (over ``--steps`` steps after ``--warmup``, then over rounds) of a step's parts, timed as
tools/bench_scaling.py times them (`timed_steps`): forward + backward (overlapped: the stages, so what they cost
shows here), the communication left after it (what overlap shortens), the update, the step. "Hidden" is the
share of the communication left without overlap that the overlapped step removes; the link's wait per step is
the sum of the ring's times of the step's allreduces (the same bytes in every setting, in other pieces).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from graphopt.distributed import Communicator  # noqa: E402
from graphopt.runtime import Runtime  # noqa: E402
from tools.bench_scaling import MODELS, PARTS, Link, allreduce_time, timed_steps  # noqa: E402


class SimulatedLink(Communicator):
    """One of ``world`` machines holding equal buffers, joined by ``link`` (``None``: infinitely fast): an
    allreduce sleeps for the ring's time on the link, then multiplies the buffer by ``world``; ``waited``
    sums the seconds slept."""

    engine, rank = "simulated", 0

    def __init__(self, world: int, link: Link | None, goodput: float = 0.9):
        self.world_size, self.link, self.waited = world, link, 0.0
        self._alpha = 0.0 if link is None else link.alpha_us * 1e-6
        self._beta = 0.0 if link is None else 1 / (link.gbps * 1e9 / 8 * goodput)

    def _allreduce_sum(self, buffer: np.ndarray) -> None:
        if self.link is not None:
            seconds = allreduce_time(buffer.nbytes, self.world_size, self._alpha, self._beta, 0.0, "ring")
            self.waited += seconds
            time.sleep(seconds)
        buffer *= buffer.dtype.type(self.world_size)

    def _broadcast(self, buffer: np.ndarray, root: int) -> None:
        pass

    def _barrier(self) -> None:
        pass


def step_parts(name: str, link: Link | None, args, bucket_mib: float | None) -> dict[str, float]:
    """A data-parallel step of ``name`` on ``link``, overlapped in ``bucket_mib`` MiB buckets (None: not): the
    medians over the timed steps of its parts (tools/bench_scaling.py's `timed_steps`: forward + backward, the
    communication left after it, the update, the total) and the link's wait per step, in ms."""
    import graphopt
    from graphopt import losses, optim

    case = MODELS[name]
    comm = SimulatedLink(args.machines, link, args.goodput)
    overlap = {"overlap": False} if bucket_mib is None else {"overlap": True,
                                                             "bucket_bytes": max(1, int(bucket_mib * 2 ** 20))}
    trainer = graphopt.Trainer(case.build(np.random.default_rng(0)), losses.cross_entropy("logits"),
                               optim.SGD(lr=0.01, momentum=0.9, runtime=Runtime(threads=args.threads)),
                               communicator=comm, **overlap)
    rng = np.random.default_rng(1)
    batch = args.batch or case.batch
    x = rng.standard_normal((batch, *case.sample)).astype(np.float32)
    y = rng.integers(0, case.classes, batch).astype(np.int64)
    rows, _ = timed_steps(trainer, comm, {"x": x}, y, args.warmup, args.steps)
    comm.close()
    parts = {part: 1e3 * float(np.median(rows[:, k])) for k, part in enumerate(PARTS)}
    return {**parts, "link_ms": 1e3 * comm.waited / (args.warmup + args.steps)}  # every step waits the same


def measure(args) -> list[dict]:
    rows = []
    for name in args.models:
        for link in args.links:
            settings = [None, *args.buckets]
            per_round: dict[float | None, list[dict]] = {b: [] for b in settings}
            for r in range(args.rounds):
                for bucket in settings[r % len(settings):] + settings[:r % len(settings)]:  # rotated each round
                    print(f"{name}, {link.name}, {'overlap off' if bucket is None else f'{bucket:g} MiB'}: "
                          f"round {r + 1}", file=sys.stderr)
                    per_round[bucket].append(step_parts(name, link, args, bucket))
            for bucket, runs in per_round.items():
                row = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
                rows.append({"model": name, "link": link.name, "machines": args.machines, "bucket_mib": bucket, **row})
            off = rows[-len(settings)]["communication_ms"]
            for row in rows[-len(settings):]:
                row["hidden"] = 1 - row["communication_ms"] / off if off > 0 else 0.0
    return rows


def report(rows: list[dict], args) -> str:
    lines = [f"command: `{args.command}`", "",
             f"one process as one of {args.machines} machines, {args.threads} threads; ms per step, median of "
             f"{args.steps} steps after {args.warmup}, then of {args.rounds} rounds", "",
             "| model | link | allreduce | bucket | link's wait per step | fwd+bwd | communication left after it | "
             "update | step | communication hidden |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mode = "after backward" if r["bucket_mib"] is None else "overlapped"
        bucket = "32 MiB" if r["bucket_mib"] is None else f"{r['bucket_mib']:g} MiB"
        lines.append(f"| {r['model']} | {r['link']} | {mode} | {bucket} | {r['link_ms']:.1f} | "
                     f"{r['accumulate_ms']:.1f} | {r['communication_ms']:.1f} | {r['update_ms']:.1f} | "
                     f"{r['total_ms']:.1f} | {r['hidden']:.0%} |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,resnet18", help=",".join(MODELS))
    parser.add_argument("--links", default="10:50,100:3", help="Gb/s:latency-µs pairs (default 10 GbE over TCP, "
                        "100 Gb/s RDMA)")
    parser.add_argument("--machines", type=int, default=8, help="machines in the simulated ring")
    parser.add_argument("--goodput", type=float, default=0.9, help="achieved share of the line rate")
    parser.add_argument("--buckets", default="1,4,16", help="bucket sizes in MiB of the overlapped step")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: bench_scaling's weak "
                        "batch per process, " + ", ".join(f"{k} {m.batch}" for k, m in MODELS.items()) + ")")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: every core)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    if set(args.models) - set(MODELS):
        parser.error(f"--models: choose from {list(MODELS)}")
    args.links = [Link(f"{float(g):g} Gb/s, {float(a):g} µs", float(g), float(a))
                  for g, a in (item.split(":") for item in args.links.split(","))]
    args.buckets = [float(b) for b in args.buckets.split(",")]
    args.command = shlex.join(["python", "tools/bench_overlap.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    rows = measure(args)
    print(report(rows, args))
    return rows


if __name__ == "__main__":
    main()
