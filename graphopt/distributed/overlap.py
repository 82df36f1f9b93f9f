"""The gradient reduction overlapped with the backward pass: the Trainer's data-parallel step (``overlap``, on by
default with more than one process).

Buckets (`gradient_buckets`): each flat gradient buffer (`graphopt.optim.flat.FlatGroup`) cut into runs of
adjacent tensors of at least ``bucket_bytes`` each (a larger tensor is a bucket of its own), from the buffer's
end, where the last layers' gradients are, which the backward pass computes first; the buffer's padding joins
its last bucket. The buckets are ordered by when the backward pass completes them (the node that makes their
last gradient, in the forward-and-backward model's order), and that model is split into one stage per bucket
(`graphopt.training.stages.split_stages`): stage ``k`` computes what bucket ``k`` needs that no earlier stage
did. Stage 0 is the forward pass and the backward pass as far as the first bucket.

A step (`overlapped_step`), the same collectives in the same order on every process:

1. the sum of the processes' batch sizes is started on the communicator's progress thread
   (`Communicator.start`);
2. each stage runs (`graphopt.runtime.staged.StagedExecutable`); once it has written its bucket's gradients into
   the flat buffer, the bucket's ``g <- g * n / N`` (``n`` this process's batch size, ``N`` the sum) and allreduce
   (with sharded state, ZeRO-1: its reduce-scatter into the shards, `graphopt.distributed.zero`) are started on
   the progress thread, and the next stage computes meanwhile;
3. the batch's loss and the running statistics are averaged (blocking collectives, so after the buckets);
4. every process applies the same update to the averaged gradients (the optimizer's step; ZeRO-1: each its
   shard's, then the allgather).

The result is the one of `graphopt.distributed.gradients.average_gradients` over whole buffers: the same
weights, the same sums. Every parameter of a Trainer has a gradient (its model's backward pass makes one for
each), so there is no agreement on which do. Steps after `Trainer.accumulate` run the step of
`graphopt.distributed.training`, which reduces the summed gradients after the backward pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from graphopt import names
from graphopt.distributed.gradients import flat_buffers
from graphopt.runtime import Runtime
from graphopt.runtime.staged import StagedExecutable
from graphopt.training.stages import StageSplitError, split_stages

BUCKET_BYTES = 4 << 20
"""Default bytes of gradients per bucket of the overlapped step (``Trainer(bucket_bytes=...)``). Smaller buckets
start communicating earlier and leave less of it after the backward pass; each costs a stage (an ONNX Runtime
call and the values handed between stages) and a collective's latency. docs/SCALING.md measures it."""


@dataclass(frozen=True)
class Bucket:
    """Tensors ``first`` to ``stop - 1`` of flat buffer ``flat`` (an index into `flat_buffers`), contiguous;
    ``grads``: their gradient outputs' names in the forward-and-backward model."""

    flat: int
    first: int
    stop: int
    grads: tuple[str, ...]

    def start(self, optimizer) -> int:
        """The bucket's first element in its flat buffer."""
        return flat_buffers(optimizer)[self.flat].offsets[self.first]

    def view(self, optimizer) -> np.ndarray:
        """The bucket's part of its flat gradient buffer (with the buffer's padding, for its last bucket)."""
        flat = flat_buffers(optimizer)[self.flat]
        end = flat.grads.size if self.stop == len(flat.params) else flat.offsets[self.stop]
        return flat.grads[flat.offsets[self.first]:end]


def gradient_buckets(optimizer, names_of: Mapping[int, str], bucket_bytes: int) -> list[Bucket]:
    """Every flat buffer of ``optimizer`` cut into buckets of at least ``bucket_bytes`` (the last one of a buffer
    may be smaller), from the buffer's end; ``names_of``: parameter name by ``id`` of the `Parameter`."""
    buckets = []
    for f, flat in enumerate(flat_buffers(optimizer)):
        stop, size = len(flat.params), 0
        for i in reversed(range(len(flat.params))):
            size += flat.params[i].size * flat.dtype.itemsize
            if size >= bucket_bytes or i == 0:
                grads = tuple(names.grad(names_of[id(p)]) for p in flat.params[i:stop])
                buckets.append(Bucket(f, i, stop, grads))
                stop, size = i, 0
    return buckets


def in_backward_order(model: onnx.ModelProto, buckets: Sequence[Bucket]) -> list[Bucket]:
    """``buckets`` sorted by the position, in ``model``'s node order, of the node that completes each: the last
    of its gradients' producers (an Identity that only renames a gradient counts as the node it copies)."""
    producer = {out: (i, node) for i, node in enumerate(model.graph.node) for out in node.output if out}

    def made_at(name: str) -> int:
        i, node = producer[name]
        while node.op_type == "Identity" and node.input[0] in producer:
            i, node = producer[node.input[0]]
        return i

    return sorted(buckets, key=lambda bucket: max(made_at(name) for name in bucket.grads))


class OverlappedGradients(StagedExecutable):
    """The forward-and-backward ``model`` split into stages by ``optimizer``'s buckets, in the order the backward
    pass completes them, compiled by ``runtime``; ``completes[k]``: the buckets stage ``k`` completes (one each).

    A model that cannot be cut there (a value crossing a cut is not a tensor of known type:
    `graphopt.training.stages.StageSplitError`) runs as one stage that completes every bucket, with a warning
    saying why: the reductions then start after the whole backward pass, as without overlap."""

    def __init__(self, runtime: Runtime, model: onnx.ModelProto, optimizer, names_of: Mapping[int, str],
                 bucket_bytes: int):
        buckets = in_backward_order(model, gradient_buckets(optimizer, names_of, bucket_bytes))
        try:
            split = split_stages(model, [bucket.grads for bucket in buckets])
            self.completes = tuple((bucket,) for bucket in buckets)
        except StageSplitError as error:
            warnings.warn(f"Trainer: the gradient reduction cannot overlap the backward pass of this model: {error}",
                          RuntimeWarning, stacklevel=4)
            split = split_stages(model, [[name for bucket in buckets for name in bucket.grads]])
            self.completes = (tuple(buckets),)
        super().__init__(runtime, split)


def overlapped_step(trainer, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float:
    """Forward and backward on this process's shard in stages, each stage's bucket averaged while the next
    computes (see the module's docstring); the running statistics averaged; the same update everywhere. Returns
    the whole batch's mean loss."""
    from graphopt.distributed.training import _average_buffers, _batch_size
    communicator, optimizer = trainer.communicator, trainer.optimizer
    size = _batch_size(inputs, labels)
    completes = trainer._gradient_executable().completes  # noqa: SLF001
    sizes = np.array([size], np.float64)
    requests = []

    def started() -> None:  # the feeds are checked: from here on every process makes the same collectives
        requests.append(communicator.allreduce_async(sizes))

    zero = trainer._zero  # noqa: SLF001 - ZeRO-1's sharded state, or None
    shards = None if zero is None else zero.flat_shards()

    def reduce(bucket: Bucket, view: np.ndarray) -> None:  # on the progress thread, after the sizes' sum
        view *= view.dtype.type(size / sizes[0])
        if shards is None:
            communicator.allreduce(view)
        else:  # the step holds the optimizer's lock meanwhile: nothing here may take it
            shards[bucket.flat].reduce_bucket(view, bucket.start(optimizer), communicator)

    def after(k: int) -> None:
        for bucket in completes[k]:
            view = bucket.view(optimizer)
            requests.append(communicator.start(lambda b=bucket, v=view: reduce(b, v)))

    try:
        loss = trainer._gradients_into_buffers(inputs, labels, "step", started=started, after=after)  # noqa: SLF001
        total_loss = communicator.allreduce(np.array([size * loss], np.float64))  # blocking: after every bucket
        for request in requests:
            request.wait()
        _average_buffers(trainer, communicator, size / sizes[0])
    except BaseException:
        _wait_quietly(requests)  # the caller drops the gradients: nothing may write into them after that
        raise
    if zero is None:
        trainer._apply_accumulated()  # noqa: SLF001
    else:
        zero.step_reduced()
        optimizer.zero_grad(set_to_none=True)
        trainer._accumulating = False  # noqa: SLF001
    return float(total_loss[0] / sizes[0])


def _wait_quietly(requests) -> None:
    """Wait for every started request, ignoring their failures (the one being raised already says it)."""
    for request in requests:
        try:
            request.wait()
        except BaseException:  # noqa: BLE001, S110
            pass
