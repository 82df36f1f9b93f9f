"""ZeRO-1: each process keeps and updates only its shard of the optimizer state.

    opt = graphopt.distributed.DataParallel(optim.AdamW(params, lr=1e-3), comm, shard_state=True)
    trainer = graphopt.Trainer(model, loss, optim.AdamW(lr=1e-3), communicator=comm, shard_state=True)

Every flat buffer of ``N`` elements (one per param group and dtype, `graphopt.optim.flat`) is cut
into ``W`` (world size) shards of ``S`` elements, ``S`` being ``ceil(N / W)`` rounded up to whole
rows of the chunked update, the last shards padded with zeros. Rank ``r`` owns elements
``[r S, (r + 1) S)``: a `FlatGroup` of one 1-d tensor of ``S`` elements holds its copy of those
parameters, their averaged gradient and the only copy of their optimizer state. A step:

1. which tensors have a gradient, and the processes' weights, are agreed (one small allreduce);
2. reduce-scatter of the weighted gradients (``sum_r w_r g_r / sum_r w_r``, `average_gradients`'s
   weighting): each rank receives the average over its shard only (a Trainer's overlapped step,
   `graphopt.distributed.overlap`, reduce-scatters each bucket into the shards as the backward pass makes it,
   `flat_shards`, then calls `step_reduced` for 3 and 4);
3. the wrapped optimizer's own update (its transform chain and hyperparameters, read from its
   ``param_groups`` at every step, so lr changes and schedulers apply) runs on the shard, on the
   chunked path (fused kernels where the runtime has them);
4. allgather of the updated shards into every process's flat parameter buffer.

So every process ends the step with all parameters (identical everywhere), while each holds
``1 / W`` of the optimizer state (`state_bytes`). Gradients and parameters stay whole on every
process (that is ZeRO-1; ZeRO-2/3 would shard those too). The collectives go through a scratch
buffer of at most ``bucket_bytes`` (pieces of every rank's shard), except when one piece is the
whole buffer.

Only an update that is elementwise across a flat buffer can run on a shard: a chain that needs a
tensor's own norm or shape (``clip_per_tensor``, LAMB's and LARS's trust ratios, Adafactor's
factored moments, Muon's orthogonalization: what `graphopt.update.chunked` raises `NotChunkable`
for), LBFGS, and weight averaging (``averaging=``) are refused. Clipping by the group's global norm
is supported: the shards' sums of squares are summed over the processes (one more allreduce).
Step counts are kept per shard, so per param group: a step where some tensors of a group have a
gradient on no process, and others have one, raises (naming the tensor); a group where none has
one is left alone, as the unsharded optimizer leaves it.

``state_dict()`` is collective (every process must call it) and returns the *consolidated* state,
the same format and content as the unsharded optimizer's: each state slot is allgathered, one slot
at a time, so during a save every process briefly holds the whole state (the unsharded size).
``load_state_dict`` takes such a dict (from a sharded run on any number of processes, or from an
unsharded optimizer) and keeps this process's slice of it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from graphopt import names
from graphopt.distributed.communicator import Communicator
from graphopt.distributed.gradients import BUCKET_BYTES, agree_gradients, own_weight, weighted_gradients
from graphopt.optim.flat import FlatGroup, row_length
from graphopt.parameter import Parameter
from graphopt.transforms import Chain, chain
from graphopt.update.chunked import ChunkedSpec, NotChunkable, build_chunked

WHERE = "shard_state=True"


class _Shard:
    """This process's shard of one flat buffer (``flat``: the wrapped optimizer's), in ``local``:
    a flat group of one 1-d tensor of ``size`` elements, starting at element ``start`` of ``flat``."""

    def __init__(self, flat: FlatGroup, communicator: Communicator, runtime, owner: object, label: str):
        world = communicator.world_size
        self.flat = flat
        self.world = world
        first = -(-flat.data.size // world)
        row = row_length(first, runtime.chunk_size)
        self.size = -(-first // row) * row  # whole rows of the chunked update
        self.start = communicator.rank * self.size
        self.local = FlatGroup([Parameter(np.zeros(self.size, flat.dtype), name=label)], runtime.chunk_size, owner,
                               runtime.zeros)
        assert self.local.data.size == self.size, (self.local.data.size, self.size)

    @property
    def padded(self) -> int:
        return self.world * self.size

    def owned(self, lo: int, hi: int) -> tuple[int, int]:
        """The part of ``[lo, hi)`` (elements of the flat buffer) this shard owns, clipped (maybe empty)."""
        return max(lo, self.start), min(hi, self.start + self.size)

    def load_parameters(self) -> None:
        """Copy this shard's parameters from the flat buffer (the user or a checkpoint may have set them)."""
        lo, hi = self.owned(0, self.flat.data.size)
        if hi > lo:
            self.local.data[:hi - lo] = self.flat.data[lo:hi]

    def pieces(self, bucket_bytes: int) -> list[tuple[int, int]]:
        """``[c, c + b)`` ranges of the shard such that ``world * b`` elements fit in ``bucket_bytes``."""
        piece = max(1, min(self.size, bucket_bytes // (self.world * self.flat.dtype.itemsize)))
        return [(c, min(c + piece, self.size)) for c in range(0, self.size, piece)]

    def reduce_scatter(self, source: np.ndarray, communicator: Communicator, bucket_bytes: int) -> None:
        """This shard's part of the sum over the processes of ``source`` (a flat buffer) into ``local.grads``."""
        if self.padded == source.size and self.size * self.world * source.itemsize <= bucket_bytes:
            communicator.reduce_scatter(source, out=self.local.grads)
            return
        blocks = _padded_rows(source, self.world, self.size)
        pieces = self.pieces(bucket_bytes)
        scratch = np.empty(self.world * (pieces[0][1] - pieces[0][0]), source.dtype)
        for c, d in pieces:
            send = scratch[:self.world * (d - c)].reshape(self.world, d - c)
            for r, row in enumerate(blocks):
                part = row[c:d]
                send[r, :part.size] = part
                send[r, part.size:] = 0
            communicator.reduce_scatter(send.reshape(-1), out=self.local.grads[c:d])

    def reduce_bucket(self, bucket: np.ndarray, lo: int, communicator: Communicator) -> None:
        """The sum over the processes of ``bucket`` (elements ``lo`` to ``lo + bucket.size`` of the flat
        buffer): each rank receives the part its shard owns (one reduce-scatter of the bucket's own size);
        this shard's into ``local.grads``."""
        hi = lo + bucket.size
        counts = [max(0, min(hi, (r + 1) * self.size) - max(lo, r * self.size)) for r in range(self.world)]
        own_lo, own_hi = self.owned(lo, hi)
        own = self.local.grads[max(0, own_lo - self.start):max(0, own_hi - self.start)]
        communicator.reduce_scatter(bucket, out=own, counts=counts)

    def allgather(self, communicator: Communicator, bucket_bytes: int) -> None:
        """Every process's updated shard into the flat parameter buffer."""
        data = self.flat.data
        if self.padded == data.size and self.size * self.world * data.itemsize <= bucket_bytes:
            communicator.allgather(self.local.data, out=data)
            return
        blocks = _padded_rows(data, self.world, self.size)
        pieces = self.pieces(bucket_bytes)
        scratch = np.empty(self.world * (pieces[0][1] - pieces[0][0]), data.dtype)
        for c, d in pieces:
            gathered = communicator.allgather(self.local.data[c:d], out=scratch[:self.world * (d - c)])
            gathered = gathered.reshape(self.world, d - c)
            for r, row in enumerate(blocks):
                part = row[c:d]
                part[...] = gathered[r, :part.size]


def _padded_rows(buffer: np.ndarray, world: int, size: int) -> list[np.ndarray]:
    """Rank ``r``'s part ``buffer[r size:(r + 1) size]`` for each rank, short (or empty) past the end."""
    return [buffer[r * size:(r + 1) * size] for r in range(world)]


class ShardedState:
    """The optimizer state of ``optimizer`` sharded over ``communicator``'s processes (ZeRO-1, see
    the module docstring); `step` replaces the optimizer's own step. Made by
    ``DataParallel(..., shard_state=True)`` and ``Trainer(..., shard_state=True)``."""

    def __init__(self, optimizer, communicator: Communicator, bucket_bytes: int = BUCKET_BYTES):
        self.optimizer = optimizer
        self.communicator = communicator
        self.bucket_bytes = int(bucket_bytes)
        if self.bucket_bytes < 1:
            raise ValueError(f"{WHERE}: bucket_bytes must be >= 1, got {bucket_bytes!r}")
        self._checked: dict[tuple, None] = {}
        check_shardable(optimizer, self._checked)
        existing = optimizer.state_dict() if _has_state(optimizer) else None
        self._shards: list[list[_Shard]] = []
        self._add_groups()
        if existing is not None:  # an optimizer that already stepped: its state moves into the shards
            for flats in optimizer._flats:  # noqa: SLF001
                for flat in flats:
                    flat.slots.clear()
                    flat.runners.clear()
            self.load_state_dict(existing)

    def _add_groups(self) -> None:
        """Shards for the param groups added since the last call (``add_param_group`` after wrapping)."""
        runtime = self.optimizer._runtime  # noqa: SLF001
        for g in range(len(self._shards), len(self.optimizer.param_groups)):
            flats = self.optimizer._flats[g]  # noqa: SLF001
            self._shards.append([_Shard(flat, self.communicator, runtime, self, f"{names.group(g)}.shard{f}")
                                 for f, flat in enumerate(flats)])

    # -- the step ------------------------------------------------------------------------

    def step(self, weight: float | None = None) -> None:
        """Average the gradients (weighted by ``weight``, as `average_gradients`), update this process's
        shard, gather every shard's parameters. Collective."""
        with self.optimizer._lock:  # noqa: SLF001
            layouts = self._checked_layouts()
            self._update(layouts, self._agree_gradients(weight))

    def flat_shards(self) -> list[_Shard]:
        """This process's shard of every flat buffer, in `flat_buffers` order: the overlapped step
        (`graphopt.distributed.overlap`) reduces each bucket of gradients into them as the backward pass makes
        it (`_Shard.reduce_bucket`, on the progress thread), then calls `step_reduced`."""
        with self.optimizer._lock:  # noqa: SLF001
            self._add_groups()
            return [s for group in self._shards for s in group]

    def step_reduced(self) -> None:
        """After every bucket was reduced into the shards (`flat_shards`): update this process's shards, gather
        the parameters. Every tensor of every group had a gradient (a Trainer's do)."""
        with self.optimizer._lock:  # noqa: SLF001
            layouts = self._checked_layouts()
            self._update(layouts, list(range(len(self._shards))))

    def _checked_layouts(self) -> list:
        """The optimizer's layouts (validated settings, chains, hyperparameters), each chain checked shardable."""
        optimizer = self.optimizer
        self._add_groups()
        layouts = optimizer._layouts()  # noqa: SLF001
        for g, layout in enumerate(layouts):
            _check_chain(type(optimizer).__name__, g, layout.transform, layout.flats, self._checked)
        return layouts

    def _update(self, layouts: list, active: list[int]) -> None:
        """The ``active`` groups' shards updated from their reduced gradients, then every shard gathered."""
        optimizer, comm = self.optimizer, self.communicator
        if optimizer.skip_nonfinite:
            found = [optimizer._executor.any_nonfinite([s.local.grads])  # noqa: SLF001
                     for g in active for s in self._shards[g]]
            optimizer.found_inf = bool(comm.allreduce(np.array([float(any(found))]))[0])
            if optimizer.found_inf:
                optimizer.skipped_steps += 1
                self._finish()
                return
        plans = []
        for g in active:
            layout, shards = layouts[g], self._shards[g]
            for s in shards:
                s.load_parameters()
            locals_ = [s.local for s in shards]
            plans.append(optimizer._executor.plan(  # noqa: SLF001
                layout.group, locals_, layout.transform, layout.hypers,
                [[f"{layout.group}.shard{f}"] for f in range(len(shards))], [[s.local.grads] for s in shards],
                False))
        for plan in plans:
            plan.prepare()
        for plan in plans:  # clipping by the global norm: the shards' sums of squares summed over the processes
            plan.run(sum_over=lambda local: float(comm.allreduce(np.array([local]))[0]))
        for plan in plans:
            plan.commit()
        for g in active:
            for s in self._shards[g]:
                s.allgather(comm, self.bucket_bytes)
        self._finish()

    def _finish(self) -> None:
        self.optimizer._summing = False  # noqa: SLF001 - a sum of gradients is used once
        self.optimizer._advance_schedules()  # noqa: SLF001

    def _agree_gradients(self, weight: float | None) -> list[int]:
        """Reduce-scatter every group's weighted gradients into the shards; the groups that step.

        A tensor without a gradient on some process counts as zero there; a group none of whose
        tensors has one anywhere does not step; a group with some tensors that have one on no process
        raises, naming one (a shard's step count covers all of its group's tensors)."""
        optimizer, comm = self.optimizer, self.communicator
        summing = optimizer._summing  # noqa: SLF001
        flats = [(g, s) for g, shards in enumerate(self._shards) for s in shards]  # `flat_buffers` order
        present, total = agree_gradients(optimizer, comm, weight)
        if not total > 0:
            raise ValueError(f"{WHERE}: the processes' weights sum to {total}; each must be > 0")
        by_group: dict[int, list[tuple[Parameter, bool]]] = {}
        k = 0
        for g, s in flats:
            by_group.setdefault(g, []).extend(zip(s.flat.params, present[k:k + len(s.flat.params)]))
            k += len(s.flat.params)
        active = [g for g, tensors in by_group.items() if any(on for _, on in tensors)]
        for g in active:
            missing = [p for p, on in by_group[g] if not on]
            if missing:
                raise ValueError(f"{WHERE}: {optimizer._label(missing[0])} has no gradient on any process "  # noqa: SLF001
                                 f"this step, while other tensors of its param group have one; a sharded "
                                 f"optimizer keeps one step count per param group, so it cannot skip one tensor. "
                                 f"Give it a zero gradient (p.grad = zeros: momentum and weight decay then still "
                                 f"apply), or put it in a param group of its own")
        share = own_weight(weight) / total
        for g, s in flats:
            if g in active:
                s.reduce_scatter(weighted_gradients(s.flat, summing, share), comm, self.bucket_bytes)
        return active

    # -- state ---------------------------------------------------------------------------

    @property
    def state_bytes(self) -> int:
        """Bytes of optimizer state slots this process holds (its shards')."""
        return sum(len(s.local.slots) * s.size * s.local.dtype.itemsize for shards in self._shards for s in shards)

    def state_dict(self) -> dict[str, Any]:
        """The consolidated state, as the unsharded optimizer's ``state_dict()`` gives it. Collective:
        each slot is allgathered in turn, so every process then holds the whole state."""
        with self.optimizer._lock:  # noqa: SLF001
            self._add_groups()
            result = self.optimizer.state_dict()  # settings and class; its own state is empty
            index = {p: i for i, p in enumerate(self.optimizer._parameters())}  # noqa: SLF001
            state = {}
            for shards in self._shards:
                for s in shards:
                    state.update(self._gathered(s, index))
            result["state"] = state
            return result

    def _gathered(self, s: _Shard, index: Mapping[Parameter, int]) -> dict[int, dict[str, Any]]:
        step = s.local.steps[0]
        full = {}
        for name in sorted(s.local.slots):  # the same order on every process
            host = np.ascontiguousarray(s.local.read_slot(name))
            full[name] = self.communicator.allgather(host)
        if not step:
            return {}
        scalars = {name: values[0] for name, values in s.local.scalar_slots.items()}
        return {index[p]: {"step": step, **{name: s.flat.view(buffer, i) for name, buffer in full.items()}, **scalars}
                for i, p in enumerate(s.flat.params)}

    @property
    def state(self) -> dict[Parameter, dict[str, Any]]:
        """Per-parameter state as the unsharded optimizer's ``state`` shows it (consolidated copies). Collective."""
        params = self.optimizer._parameters()  # noqa: SLF001
        return {params[i]: entry for i, entry in self.state_dict()["state"].items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a consolidated ``state_dict`` (a sharded run's on any number of processes, or an
        unsharded optimizer's), keeping this process's slice; checked whole before anything changes."""
        with self.optimizer._lock:  # noqa: SLF001
            self._apply_loaded(*self._validated(state_dict))

    def _validated(self, state_dict: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[Parameter, tuple]]:
        """`Optimizer._validated`, and one step count (and value of each per-tensor scalar) per param group."""
        self._add_groups()
        groups, states = self.optimizer._validated(state_dict)  # noqa: SLF001
        kind = type(self.optimizer).__name__
        for g, group in enumerate(self.optimizer.param_groups):
            seen: dict[str, tuple[Parameter, Any]] = {}
            for p in group["params"]:
                step, _, scalars, _ = states.get(p, (0, {}, {}, {}))
                for key, value in {"step": step, **scalars}.items():
                    first = seen.setdefault(key, (p, value))
                    if first[1] != value:
                        raise ValueError(
                            f"{kind}.load_state_dict ({WHERE}): {self.optimizer._label(p)} has {key} "  # noqa: SLF001
                            f"{value}, {self.optimizer._label(first[0])} {first[1]}; a sharded optimizer keeps "  # noqa: SLF001
                            f"one {key} per param group (load it unsharded, or into separate groups)")
        return groups, states

    def _apply_loaded(self, groups: list[dict[str, Any]], states: dict[Parameter, tuple]) -> None:
        self.optimizer._apply_loaded(groups, {})  # noqa: SLF001 - the settings; no state outside the shards
        for g, shards in enumerate(self._shards):
            transform = self.optimizer._chain(self.optimizer.param_groups[g], g)  # noqa: SLF001
            for s in shards:
                loaded = [states.get(p, (0, {}, {}, {})) for p in s.flat.params]
                s.local.steps = [loaded[0][0]] if loaded else [0]
                s.local.scalar_slots = {name: [loaded[0][2].get(name, initial) if loaded else initial]
                                        for name, initial in transform.scalar_slots().items()}
                for name in set(s.local.slots).union(*(slots for _, slots, _, _ in loaded)):
                    s.local.write_slot(name, {0: self._slice(s, [slots.get(name) for _, slots, _, _ in loaded])})

    @staticmethod
    def _slice(s: _Shard, values: list[np.ndarray | None]) -> np.ndarray:
        """This shard's part of a slot whose tensor ``i`` holds ``values[i]`` (zeros where None)."""
        host = np.zeros(s.size, s.local.dtype)
        for i, value in enumerate(values):
            lo, hi = s.owned(s.flat.offsets[i], s.flat.offsets[i + 1])
            if value is not None and hi > lo:
                flat = np.asarray(value).reshape(-1)
                host[lo - s.start:hi - s.start] = flat[lo - s.flat.offsets[i]:hi - s.flat.offsets[i]]
        return host


def _has_state(optimizer) -> bool:
    return any(flat.slots or any(flat.steps) for flats in optimizer._flats for flat in flats)  # noqa: SLF001


def check_shardable(optimizer, checked: dict | None = None) -> None:
    """Raise, naming the optimizer, the group and the reason, if ``optimizer``'s update cannot run on
    shards of its flat buffers (see the module docstring)."""
    kind = type(optimizer).__name__
    if getattr(optimizer, "averaging", None) is not None:
        raise ValueError(f"{WHERE}: {kind} keeps a weight average (averaging={optimizer.averaging!r}); sharded "
                         "optimizer state does not support averaging yet (the average would be sharded too)")
    try:
        layouts = optimizer._layouts()  # noqa: SLF001
    except NotImplementedError as error:
        raise ValueError(f"{WHERE}: {kind} cannot be sharded: {error}") from error
    for g, layout in enumerate(layouts):
        _check_chain(kind, g, layout.transform, layout.flats, {} if checked is None else checked)


def _check_chain(kind: str, g: int, transform, flats: list[FlatGroup], checked: dict) -> None:
    """Refuse a chain that is not elementwise across a flat buffer (`NotChunkable`), naming the transform."""
    for flat in flats:
        key = (transform, flat.dtype)
        if key in checked:
            continue
        try:
            build_chunked(ChunkedSpec(names.group(g), transform, flat.dtype, 16))
        except NotChunkable as error:
            culprit = next((t for t in _leaves(transform) if not _chunkable(t, flat.dtype)), transform)
            raise ValueError(f"{WHERE}: {kind} param group {g} cannot be sharded: {culprit!r} is not elementwise "
                             f"across the flat buffer ({error}), and a shard spans parts of several tensors; "
                             "per-tensor norms, factored moments and orthogonalization need whole tensors, so "
                             "run this optimizer unsharded") from error
        checked[key] = None


def _leaves(transform) -> list:
    """The transforms of a (nested) chain, in order."""
    if isinstance(transform, Chain):
        return [leaf for t in transform.transforms for leaf in _leaves(t)]
    return [transform]


def _chunkable(transform, dtype: np.dtype) -> bool:
    try:
        build_chunked(ChunkedSpec("g", chain(transform), dtype, 16))
    except NotChunkable:
        return False
    return True


def state_bytes(optimizer) -> int:
    """Bytes of optimizer state this process holds: a sharded one's shards (`DataParallel` with
    ``shard_state=True``, a `Trainer` with it, or a `ShardedState`), else the optimizer's flat state
    slots and per-tensor shaped slots."""
    zero = optimizer if isinstance(optimizer, ShardedState) else getattr(optimizer, "_zero", None)
    if zero is not None:
        return zero.state_bytes
    optimizer = getattr(optimizer, "optimizer", optimizer)
    total = 0
    for flats in optimizer._flats:  # noqa: SLF001
        for flat in flats:
            total += len(flat.slots) * flat.data.size * flat.dtype.itemsize
            total += sum(a.nbytes for shaped in flat.shaped_slots for a in shaped.values())
    return total
