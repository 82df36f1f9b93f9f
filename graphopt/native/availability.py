"""Whether fused kernels can be used here, and the one warning given when they cannot."""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

from graphopt.native.errors import FusedBuildError

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


def disabled_reason() -> str | None:
    """Why the environment turns fused kernels off (``GRAPHOPT_FUSED=0``), or None."""
    if os.environ.get("GRAPHOPT_FUSED", "").strip() == "0":
        return "GRAPHOPT_FUSED=0 is set in the environment"
    return None


def available() -> Availability:
    """Whether fused kernels can be used: not disabled, a C++ compiler works, the cache folder is safe, and a
    probe kernel builds and registers in this onnxruntime."""
    disabled = disabled_reason()
    if disabled:
        return Availability(False, disabled)
    from graphopt.native import cache, compiler  # here, not at import: kernel.py imports this module

    try:
        found = compiler.find_compiler()
        return _probe(found, str(cache.folder_path()), os.environ.get("CXX", ""))
    except FusedBuildError as exc:
        return Availability(False, str(exc))


@functools.lru_cache(maxsize=None)
def _probe(found, folder: str, cxx: str) -> Availability:
    from graphopt.native.kernel import compile_kernel

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
