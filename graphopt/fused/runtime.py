"""Whether a chunked update runs fused, and its compiled kernels: the bridge from `graphopt.fused`
(code generation) and `graphopt.native` (building, loading) to the executor.

`fused_update` gives the fused models with their kernels, or None -- the standard path -- when the
runtime says ``fused=False``, runs on a GPU or keeps state in device buffers, fused kernels are off
or cannot be built here (`graphopt.native.available`), the update has a node with no translation (`NotFusable`) or its
kernel does not build (`FusedBuildError`). Each reason is said once per process (a RuntimeWarning),
except ``GRAPHOPT_FUSED=0`` with the default ``fused=None``: the user turned kernels off.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import onnx

from graphopt import native
from graphopt.fused.errors import NotFusable
from graphopt.fused.model import fuse
from graphopt.native.availability import OFF
from graphopt.update.chunked import ChunkedModels


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
