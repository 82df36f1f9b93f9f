"""`average_gradients`: every process's gradients averaged in the optimizer's flat buffers.

The gradients already live in each param group's flat buffer (``FlatGroup.grads``, or
``FlatGroup.sums`` after ``sum_grad``), so the average is a bucketed allreduce over those buffers,
in place. A tensor without a gradient on some process counts as a zero gradient there (as a
parameter its shard did not reach); a tensor without one on every process keeps ``grad = None``
everywhere. Which tensors have one is agreed first (one small allreduce), so every process
applies the same update to the same tensors.
"""

from __future__ import annotations

import numpy as np

from graphopt.distributed.communicator import Communicator

BUCKET_BYTES = 32 << 20  # one allreduce per 32 MiB of a flat buffer


def average_gradients(optimizer, communicator: Communicator, weight: float | None = None,
                      bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replace every gradient of ``optimizer`` by its average over the processes.

    ``weight`` (this process's share, e.g. its batch size) makes it the weighted average
    ``sum_r weight_r * g_r / sum_r weight_r``, exact for mean-reduced losses over unequal shards;
    without it every process counts the same."""
    summing = optimizer._summing  # noqa: SLF001
    present, total_weight = agree_gradients(optimizer, communicator, weight)
    share = own_weight(weight) / total_weight
    k = 0
    for flat in flat_buffers(optimizer):
        buffer = weighted_gradients(flat, summing, share)
        for bucket in _buckets(buffer, bucket_bytes):
            communicator.allreduce(bucket)
        for i, p in enumerate(flat.params):
            if present[k + i]:
                if summing:
                    flat.summed[i] = True
                else:
                    p.grad = flat.view(flat.grads, i)
        k += len(flat.params)


def flat_buffers(optimizer) -> list:
    """Every flat buffer of ``optimizer`` (`graphopt.optim.flat.FlatGroup`), group by group."""
    return [flat for group in optimizer._flats for flat in group]  # noqa: SLF001


def own_weight(weight: float | None) -> float:
    return 1.0 if weight is None else float(weight)


def agree_gradients(optimizer, communicator: Communicator, weight: float | None) -> tuple[np.ndarray, float]:
    """Which tensors (in `flat_buffers` order) have a gradient on some process, and the sum of the
    processes' weights (`own_weight` each): one small allreduce. Before it, this process's gradients are
    checked and any set behind the setter moved into the flat buffers, so a bad one raises before any
    collective (where the other processes would wait for this one)."""
    summing = optimizer._summing  # noqa: SLF001
    flats = flat_buffers(optimizer)
    if not summing:
        for flat in flats:
            for p in flat.params:
                if p.grad is not None:
                    optimizer._stored_grad(p)  # noqa: SLF001
    local = [float(has_gradient(flat, i, summing)) for flat in flats for i in range(len(flat.params))]
    agreed = communicator.allreduce(np.array(local + [own_weight(weight)]))
    return agreed[:-1] > 0, float(agreed[-1])


def weighted_gradients(flat, summing: bool, share: float) -> np.ndarray:
    """``flat``'s gradient buffer (its sums after ``sum_grad``), zero for the tensors without a gradient on
    this process (a parameter its shard did not reach), multiplied in place by ``share``."""
    buffer = flat.sum_buffer() if summing else flat.grads
    for i in range(len(flat.params)):
        if not has_gradient(flat, i, summing):
            flat.view(buffer, i)[...] = 0
    buffer *= buffer.dtype.type(share)
    return buffer


def has_gradient(flat, i: int, summing: bool) -> bool:
    """Whether tensor ``i`` of ``flat`` has a gradient (a summed one after ``sum_grad``) on this process."""
    return bool(flat.summed[i]) if summing else flat.params[i].grad is not None


def _buckets(buffer: np.ndarray, bucket_bytes: int) -> list[np.ndarray]:
    """Contiguous slices of the 1-d ``buffer`` of at most ``bucket_bytes`` each."""
    size = max(1, bucket_bytes // buffer.itemsize)
    return [buffer[start:start + size] for start in range(0, buffer.size, size)]
