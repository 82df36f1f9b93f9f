"""Whether a chunked update runs fused, and its compiled kernels: the bridge from `graphopt.fused`
(code generation) and `graphopt.native` (building, loading) to the executor.

`fused_update` gives the fused models with their kernels, or None -- the standard path -- when the
runtime says ``fused=False``, runs on a GPU or keeps state in device buffers, fused kernels are off
or cannot be built here (`graphopt.native.available`), the update has a node with no translation (`NotFusable`) or its
kernel does not build (`FusedBuildError`). Each reason is said once per process (a RuntimeWarning),
except ``GRAPHOPT_FUSED=0`` with the default ``fused=None``: the user turned kernels off.

`fused_training_step` does the same for a `Trainer`'s training-step model: the groups that fuse are updated by
their fused nodes inside the step graph (`graphopt.fused.step`), all their kernels in one library; the others keep
the standard operators in the same graph.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import onnx

from graphopt import native
from graphopt.fused.errors import NotFusable
from graphopt.fused.model import FusedModels, fuse
from graphopt.fused.step import fuse_training_step
from graphopt.native.availability import OFF
from graphopt.update import GroupSpec
from graphopt.update.chunked import ChunkedModels, ChunkedSpec, NotChunkable, build_chunked


class FusedUpdate(NamedTuple):
    """A chunked update's fused models and the kernel each one needs."""

    update: onnx.ModelProto
    update_kernel: native.Kernel
    reduce: onnx.ModelProto | None
    reduce_kernel: native.Kernel | None


def runs_fused(runtime) -> bool:
    """Whether ``runtime``'s chunked updates are to run fused (before any is fused: the update may still
    turn out `NotFusable`, and then runs on standard operators)."""
    if runtime.fused is False or not runtime.device.is_host or runtime.device_buffers:
        return False  # the kernels run on host memory that numpy owns
    status = native.available()
    if not status and (runtime.fused or not _turned_off()):
        native.warn_fallback(status.reason)
    return bool(status)


def _turned_off() -> bool:
    """Whether the user turned fused kernels off in the environment (then falling back goes unsaid)."""
    return os.environ.get("GRAPHOPT_FUSED", "").strip().lower() in OFF


def fused_update(runtime, models: ChunkedModels) -> FusedUpdate | None:
    """``models`` fused and their kernels built, or None to run them as they are (see the module docstring)."""
    if not runs_fused(runtime):
        return None
    try:
        fused = fuse(models)
        update_kernel = native.compile_kernel(fused.update.fragment)
        reduce_kernel = None if fused.reduce is None else native.compile_kernel(fused.reduce.fragment)
    except (NotFusable, native.FusedBuildError) as error:
        native.warn_fallback(str(error))
        return None
    return FusedUpdate(fused.update.model, update_kernel, None if fused.reduce is None else fused.reduce.model,
                       reduce_kernel)


def fused_training_step(runtime, step: onnx.ModelProto,
                        groups: Sequence[GroupSpec]) -> tuple[onnx.ModelProto, native.Kernel] | None:
    """The training-step model ``step`` (`graphopt.training.step.build_training_step` of ``groups``, unguarded)
    with each group that fuses updated by fused nodes, and the one library of their kernels; None -- run ``step``
    as it is -- where `runs_fused` says no, no group fuses (its chain has no chunked form, or a node no
    translation), or the library does not build (said once, as `fused_update` does). A group that does not fuse
    keeps its standard update in the graph."""
    if not runs_fused(runtime):
        return None
    fused: list[tuple[GroupSpec, dict[np.dtype, FusedModels]]] = []
    try:
        for group in groups:
            by_dtype = _fused_group(runtime, group)
            if by_dtype is not None:
                fused.append((group, by_dtype))
        if not fused:
            return None
        fragments = [f.fragment for _, by_dtype in fused for models in by_dtype.values()
                     for f in (models.update, models.reduce) if f is not None]
        kernel = native.compile_kernels(fragments)
        return fuse_training_step(step, fused), kernel
    except (NotFusable, native.FusedBuildError) as error:
        native.warn_fallback(str(error))
        return None


def _fused_group(runtime, group: GroupSpec) -> dict[np.dtype, FusedModels] | None:
    """The group's fused models per dtype of its tensors, or None -- its standard update -- when its chain has no
    chunked form or a node without a translation (said once)."""
    result = {}
    for dtype in dict.fromkeys(np.dtype(p.dtype) for p in group.params):
        try:
            result[dtype] = fuse(build_chunked(ChunkedSpec(group.name, group.transform, dtype, runtime.chunk_size)))
        except NotChunkable:
            return None
        except NotFusable as error:
            native.warn_fallback(str(error))
            return None
    return result
