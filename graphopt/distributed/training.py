"""The Trainer's data-parallel step (``Trainer(..., communicator=comm)``, sharded with
``shard_state=True``: `graphopt.distributed.zero`) and `shard`.

Each process runs forward and backward on its shard of the batch (`Trainer.accumulate`, gradients
into the flat buffers, no update); the gradients are averaged weighted by the shard sizes
(`average_gradients`: exact for a mean-reduced loss, the built-in losses' reduction, over shards of
any sizes); the running statistics (BatchNormalization's) are averaged with the same weights; every
process then applies the same update. The returned loss is the weighted average of the shards'
losses: the whole batch's mean loss.

Running statistics: each process updates them from its own shard's batch statistics, as torch's
DistributedDataParallel without SyncBatchNorm normalizes; averaging them after the step makes
``running_mean`` exactly the whole batch's update (a mean of shard means), while ``running_var``
becomes the mean of the shards' variances (without the spread between shard means). Integer
buffers (batch counters) are the same on every process and are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphopt.distributed.communicator import Communicator
from graphopt.distributed.gradients import average_gradients


def shard(batch: np.ndarray, communicator: Communicator) -> np.ndarray:
    """This process's contiguous part of ``batch`` along its first axis (``numpy.array_split``: the
    first ``len(batch) % world_size`` processes get one sample more)."""
    return np.array_split(batch, communicator.world_size)[communicator.rank]


def broadcast_trainer(trainer, communicator: Communicator, root: int = 0) -> None:
    """Parameters and running statistics of ``trainer`` set to ``root``'s values."""
    from graphopt.distributed.data_parallel import broadcast_parameters
    broadcast_parameters(trainer.optimizer, communicator, root)
    for name, value in trainer.buffers.items():
        trainer.buffers[name] = communicator.broadcast(np.ascontiguousarray(value).copy(), root)


def overlap_setting(overlap: bool | None, bucket_bytes: int | None,
                    communicator: Communicator | None) -> tuple[bool, int]:
    """``Trainer(overlap=..., bucket_bytes=...)`` checked: whether the data-parallel step overlaps its reduction
    with the backward pass (`graphopt.distributed.overlap`; default: with more than one process), and its bucket
    size."""
    from graphopt.distributed.overlap import BUCKET_BYTES
    if overlap not in (None, True, False):
        raise ValueError(f"Trainer: overlap must be True, False or None, got {overlap!r}")
    if overlap and communicator is None:
        raise ValueError("Trainer: overlap=True needs a communicator (communicator=graphopt.distributed.init())")
    if bucket_bytes is not None and (isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int)
                                     or bucket_bytes < 1):
        raise ValueError(f"Trainer: bucket_bytes must be a positive number of bytes, got {bucket_bytes!r}")
    if overlap is None:
        overlap = communicator is not None and communicator.world_size > 1
    return overlap, BUCKET_BYTES if bucket_bytes is None else bucket_bytes


def data_parallel_step(trainer, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float:
    """Forward and backward on this process's shard, gradients and running statistics averaged over
    the processes (weighted by shard size), the same update on every process; the whole batch's loss.
    With ``trainer.overlap``, overlapped (`graphopt.distributed.overlap`) unless it follows `Trainer.accumulate` calls.

    A step that raises before the update (a `CommunicationError`: a peer died) leaves the parameters, the
    optimizer state and the running statistics as they were, and drops the gradients (those summed by earlier
    `Trainer.accumulate` calls too: they were scaled in place)."""
    buffers = dict(trainer.buffers)
    try:
        if trainer.overlap and not trainer._accumulating:  # noqa: SLF001
            from graphopt.distributed.overlap import overlapped_step
            return overlapped_step(trainer, inputs, labels)
        return _step_after_backward(trainer, inputs, labels)
    except BaseException:
        trainer.buffers = buffers  # the arrays themselves are never written: a step commits new ones
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._accumulating = False  # noqa: SLF001
        raise


def _step_after_backward(trainer, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float:
    """The step whose reductions start after the whole backward pass (whole buffers, or ZeRO-1's shards)."""
    communicator = trainer.communicator
    loss = trainer.accumulate(inputs, labels)
    size = _batch_size(inputs, labels)
    totals = communicator.allreduce(np.array([size, size * loss], np.float64))
    zero = trainer._zero  # noqa: SLF001
    if zero is None:
        average_gradients(trainer.optimizer, communicator, weight=size)
    _average_buffers(trainer, communicator, size / totals[0])
    if zero is None:
        trainer._apply_accumulated()  # noqa: SLF001
    else:  # ZeRO-1: reduce-scatter, this process's shard updated, allgather
        zero.step(weight=size)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._accumulating = False  # noqa: SLF001
    return float(totals[1] / totals[0])


def shard_trainer_state(trainer, communicator: Communicator | None):
    """The `ShardedState` of ``Trainer(..., shard_state=True)``; refuses what it cannot shard."""
    from graphopt.distributed.zero import ShardedState
    if communicator is None:
        raise ValueError("Trainer: shard_state=True needs a communicator (communicator=graphopt.distributed.init())")
    if trainer.grad_scaler is not None:
        raise ValueError("Trainer: shard_state=True does not support grad_scaler yet (its unscale and skip run on "
                         "the whole optimizer); use the optimizer's skip_nonfinite=True for non-finite steps")
    return ShardedState(trainer.optimizer, communicator)


def _average_buffers(trainer, communicator: Communicator, share: float) -> None:
    """The float buffers weighted by ``share`` and summed over the processes: one allreduce per dtype
    of all of them packed together (a ResNet's BatchNorm layers would otherwise make dozens of tiny ones,
    each paying the network's latency)."""
    by_dtype: dict[np.dtype, list[str]] = {}
    for name, value in trainer.buffers.items():
        if value.dtype.kind == "f":
            by_dtype.setdefault(value.dtype, []).append(name)
    for dtype, names_ in by_dtype.items():
        values = [np.asarray(trainer.buffers[name]) for name in names_]
        packed = np.concatenate([v.reshape(-1) for v in values]) * dtype.type(share)
        communicator.allreduce(packed)
        offsets = np.cumsum([0] + [v.size for v in values])
        for name, v, start in zip(names_, values, offsets):
            trainer.buffers[name] = packed[start:start + v.size].reshape(v.shape)


def _batch_size(inputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> int:
    """The shard's number of samples: the first axis of its labels, else of its first input."""
    first = labels if labels is not None else next(iter(inputs.values()), None)
    if first is None or np.ndim(first) == 0:
        raise ValueError("Trainer.step (data parallel): cannot tell the shard's batch size; feed batched "
                         "inputs (samples along the first axis)")
    return int(np.shape(first)[0])
