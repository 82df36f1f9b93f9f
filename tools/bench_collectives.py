"""Time graphopt.distributed's collectives on a float32 buffer, under the launcher of your choice:

    mpiexec -n 2 python -m tools.bench_collectives --elements 16000000
    torchrun --nproc-per-node 2 -m tools.bench_collectives --elements 16000000

Prints, on rank 0, the median over ``--repeat`` runs of allreduce, reduce-scatter + allgather, and broadcast.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from graphopt import distributed


def median_ms(comm, run, repeat: int) -> float:
    """Milliseconds of ``run()``, median of ``repeat``, each started together on every process (a barrier)."""
    times = []
    for _ in range(repeat):
        comm.barrier()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--engine", default=None, help="mpi, torch (default: from the launcher)")
    args = parser.parse_args()
    comm = distributed.init(args.engine)
    n = args.elements - args.elements % comm.world_size
    buffer, shard = np.ones(n, np.float32), np.empty(n // comm.world_size, np.float32)
    results = {"allreduce": median_ms(comm, lambda: comm.allreduce(buffer), args.repeat),
               "reduce_scatter+allgather": median_ms(
                   comm, lambda: comm.allgather(comm.reduce_scatter(buffer, out=shard), out=buffer), args.repeat),
               "broadcast": median_ms(comm, lambda: comm.broadcast(buffer), args.repeat)}
    if comm.rank == 0:
        print(f"{comm.engine}, {comm.world_size} processes, {n} float32:",
              ", ".join(f"{k} {v:.1f} ms" for k, v in results.items()))


if __name__ == "__main__":
    main()
