"""Whether fused kernels can be used here, and the one warning given when they cannot."""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass

import onnxruntime as ort

from graphopt.native import cache
from graphopt.native.build import ORT_API_VERSION
from graphopt.native.compiler import Compiler, find_compiler
from graphopt.native.errors import FusedBuildError

OFF = ("0", "false", "no", "off")
MIN_ONNXRUNTIME = (1, 17)

PROBE = """\
#define GRAPHOPT_OP_NAME "Fused_probe"
static const int graphopt_num_inputs = 1;
static const int graphopt_num_outputs = 1;
static const int graphopt_input_types[] = {1};
static const int graphopt_output_types[] = {1};
static const int graphopt_elementwise_inputs = 1;
static void graphopt_kernel(int64_t begin, int64_t end, const void* const* in, void* const* out) {
  for (int64_t i = begin; i < end; ++i) static_cast<float*>(out[0])[i] = std::sqrt(static_cast<const float*>(in[0])[i]);
}
"""
"""A tiny fragment built (once per cache folder and compiler) and registered to prove the whole chain works."""


@dataclass(frozen=True)
class Availability:
    """Truthy when fused kernels can be built and loaded here; ``reason`` says why not (or what builds them)."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def unsupported_reason() -> str | None:
    """Why fused kernels are off before anything is built, or None: ``GRAPHOPT_FUSED=0`` in the environment
    (also ``false``, ``no``, ``off``), a system other than POSIX, or an onnxruntime older than 1.17."""
    value = os.environ.get("GRAPHOPT_FUSED", "").strip()
    if value.lower() in OFF:
        return f"GRAPHOPT_FUSED={value} is set in the environment"
    if os.name != "posix":
        return f"fused kernels are built only on POSIX systems (Linux, macOS), not on {os.name!r}"
    version = re.match(r"(\d+)\.(\d+)", ort.__version__)
    if version is None or tuple(int(part) for part in version.groups()) < MIN_ONNXRUNTIME:
        return (f"onnxruntime {ort.__version__} is older than 1.17, the first whose custom ops can return errors "
                f"(C API {ORT_API_VERSION})")
    return None


def available() -> Availability:
    """Whether fused kernels can be used: not turned off (`unsupported_reason`), a C++ compiler works, the cache
    folder is safe, and a probe kernel builds and registers in this onnxruntime (once per compiler and folder)."""
    unsupported = unsupported_reason()
    if unsupported:
        return Availability(False, unsupported)
    try:
        found = find_compiler()
    except FusedBuildError as exc:
        return Availability(False, str(exc))
    return _probe(found, str(cache.folder_path()))


@functools.lru_cache(maxsize=None)
def _probe(found: Compiler, folder: str) -> Availability:
    from graphopt.native.kernel import compile_kernel  # here: kernel.py imports this module

    try:
        compile_kernel(PROBE).session_options()
    except FusedBuildError as exc:
        return Availability(False, str(exc))
    return Availability(True, f"fused kernels are built with {found}")


_warned: set[str] = set()


def warn_fallback(reason: str) -> None:
    """Warn, once per process and reason, that updates run on standard ONNX operators instead of fused kernels."""
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(f"graphopt: fused update kernels are not used ({reason}); running the standard ONNX operators",
                  RuntimeWarning, stacklevel=2)
