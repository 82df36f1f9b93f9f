"""Save a data-parallel run every few steps and resume it from the last checkpoint after a fault.

    comm = distributed.init()
    trainer = graphopt.Trainer(model, loss, optimizer, communicator=comm)
    start = distributed.load_checkpoint(trainer, "ckpt")         # every process; 0 if there is none
    for step in range(start, steps):
        x, y = batch(step)                                       # the data a function of the step
        trainer.step({"x": distributed.shard(x, comm)}, labels=distributed.shard(y, comm))
        if (step + 1) % every == 0:
            distributed.save_checkpoint(trainer, "ckpt", step + 1)

A checkpoint is ``<folder>/step-<steps done>.npz``: the Trainer's ``state_dict()`` (parameters,
running statistics, optimizer state and step counts, a grad scaler's state) in `graphopt.checkpoint`'s
format, written by rank 0 alone (every process holds the same state) to a temporary file renamed over
the target, so a process killed mid-save leaves the previous checkpoint whole. An lr scheduler's state
goes to ``step-<n>.scheduler.npz``, written first: the trainer's file completes a checkpoint. The
other processes wait for rank 0's outcome (one broadcast), so a failed write raises on every process.

Every process loads the latest complete checkpoint itself: the folder must be one they all see (a
shared filesystem, or a copy on each node); `load_checkpoint` checks that they all found the same step.
"""

from __future__ import annotations

import os
import re

import numpy as np

from graphopt.checkpoint import load_state_dict, save_state_dict
from graphopt.distributed.communicator import Communicator, SingleProcess

_NAME = re.compile(r"step-(\d+)\.npz")


def checkpoint_path(folder: str | os.PathLike, step: int, part: str = "") -> str:
    """``<folder>/step-<step>.npz`` (``part="scheduler"``: ``step-<step>.scheduler.npz``)."""
    return os.path.join(os.fspath(folder), f"step-{step:09d}{'.' + part if part else ''}.npz")


def latest_step(folder: str | os.PathLike) -> int:
    """The largest step with a complete checkpoint in ``folder``; 0 if there is none (or no folder)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    return max((int(m.group(1)) for m in map(_NAME.fullmatch, names) if m), default=0)


def save_checkpoint(trainer, folder: str | os.PathLike, step: int, *, scheduler=None, keep: int = 2,
                    communicator: Communicator | None = None) -> None:
    """Rank 0 writes ``trainer``'s state (and ``scheduler``'s) as the checkpoint of ``step`` steps done
    and removes all but the ``keep`` latest; collective: every process calls it, and every one raises
    if rank 0's write failed. ``communicator``: default the trainer's."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"save_checkpoint: step must be the number of steps done (an integer >= 1), got {step!r}")
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1, got {keep!r}")
    communicator = _communicator(trainer, communicator)
    failure = None
    if communicator.rank == 0:
        try:
            _write(trainer.state_dict(), folder, int(step), scheduler, keep)
        except Exception as error:  # noqa: BLE001 - reported to every process below, re-raised here
            failure = error
    ok = communicator.broadcast(np.array([failure is None], np.int64), root=0)
    if failure is not None:
        raise failure
    if not ok[0]:
        raise RuntimeError(f"save_checkpoint: rank 0 failed to write {checkpoint_path(folder, step)} "
                           "(its own error says why)")


def load_checkpoint(trainer, folder: str | os.PathLike, *, scheduler=None,
                    communicator: Communicator | None = None) -> int:
    """Load the latest complete checkpoint of ``folder`` into ``trainer`` (and ``scheduler``) on every
    process; returns its step (steps done), or 0, changing nothing, if there is none. Collective:
    raises on every process if they did not all find the same step."""
    communicator = _communicator(trainer, communicator)
    step = latest_step(folder)
    found = communicator.allgather(np.array([step], np.int64))
    if np.any(found != found[0]):
        raise RuntimeError(f"load_checkpoint: the processes found different latest checkpoints in "
                           f"{os.fspath(folder)!r} (steps by rank: {found.tolist()}); every process must see "
                           "the same folder")
    if step == 0:
        return 0
    trainer.load_state_dict(load_state_dict(checkpoint_path(folder, step)))
    if scheduler is not None:
        path = checkpoint_path(folder, step, "scheduler")
        if not os.path.exists(path):
            raise FileNotFoundError(f"load_checkpoint: a scheduler was given but checkpoint {step} has none ({path})")
        scheduler.load_state_dict(load_state_dict(path))
    return step


def _communicator(trainer, communicator: Communicator | None) -> Communicator:
    if communicator is not None:
        return communicator
    return getattr(trainer, "communicator", None) or SingleProcess()


def _write(state, folder: str | os.PathLike, step: int, scheduler, keep: int) -> None:
    os.makedirs(folder, exist_ok=True)
    if scheduler is not None:
        save_state_dict(scheduler.state_dict(), checkpoint_path(folder, step, "scheduler"))
    save_state_dict(state, checkpoint_path(folder, step))
    steps = sorted(int(m.group(1)) for m in map(_NAME.fullmatch, os.listdir(folder)) if m)
    for old in (s for s in steps[:-keep] if s != step):
        for path in (checkpoint_path(folder, old), checkpoint_path(folder, old, "scheduler")):
            if os.path.exists(path):
                os.remove(path)
