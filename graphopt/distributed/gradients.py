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
    flats = [flat for group in optimizer._flats for flat in group]  # noqa: SLF001
    summing = optimizer._summing  # noqa: SLF001
    present = np.array([float(_has_gradient(flat, i, summing)) for flat in flats for i in range(len(flat.params))]
                       + [1.0 if weight is None else float(weight)])
    communicator.allreduce(present)
    total_weight, present = present[-1], present[:-1] > 0
    k = 0
    for flat in flats:
        buffer = flat.sum_buffer() if summing else flat.grads
        for i, p in enumerate(flat.params):
            if _has_gradient(flat, i, summing):
                if not summing:
                    optimizer._stored_grad(p)  # noqa: SLF001 - a gradient set behind the setter moves in
            else:
                flat.view(buffer, i)[...] = 0
        share = (1.0 if weight is None else float(weight)) / total_weight
        buffer *= buffer.dtype.type(share)
        for bucket in _buckets(buffer, bucket_bytes):
            communicator.allreduce(bucket)
        for i, p in enumerate(flat.params):
            if present[k + i]:
                if summing:
                    flat.summed[i] = True
                else:
                    p.grad = flat.view(flat.grads, i)
        k += len(flat.params)


def _has_gradient(flat, i: int, summing: bool) -> bool:
    return bool(flat.summed[i]) if summing else flat.params[i].grad is not None


def _buckets(buffer: np.ndarray, bucket_bytes: int) -> list[np.ndarray]:
    """Contiguous slices of the 1-d ``buffer`` of at most ``bucket_bytes`` each."""
    size = max(1, bucket_bytes // buffer.itemsize)
    return [buffer[start:start + size] for start in range(0, buffer.size, size)]
