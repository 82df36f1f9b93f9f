"""Runs a fused-kernel fragment without ONNX Runtime's custom-op machinery: the fragment and a small
``extern "C"`` wrapper compiled by g++ into a shared library, called through ctypes on numpy buffers.

Compiled as the native harness does (``-O2 -fno-math-errno -ffp-contract=off``), with every warning an
error, so a fragment that does not compile cleanly fails its test.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

COMPILER = shutil.which("g++") or shutil.which("c++")
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) on this machine")
FLAGS = ("-O2", "-fno-math-errno", "-ffp-contract=off")
NATIVE_FLAGS = ("-O3", "-march=native", "-fno-math-errno")  # the native harness's, contraction left on
COMMON = ["-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]

WRAPPER = """
extern "C" {
int graphopt_test_info(int* counts) {
  counts[0] = graphopt_num_inputs;
  counts[1] = graphopt_num_outputs;
  counts[2] = graphopt_elementwise_inputs;
  for (int k = 0; k < graphopt_num_inputs; ++k) counts[3 + k] = graphopt_input_types[k];
  for (int k = 0; k < graphopt_num_outputs; ++k) counts[3 + graphopt_num_inputs + k] = graphopt_output_types[k];
#ifdef GRAPHOPT_REDUCTION
  return 1;
#else
  return 0;
#endif
}
#ifdef GRAPHOPT_REDUCTION
double graphopt_test_reduce(int64_t begin, int64_t end, const void* const* in) {
  return graphopt_reduce(begin, end, in);
}
#else
void graphopt_test_kernel(int64_t begin, int64_t end, const void* const* in, void* const* out) {
  graphopt_kernel(begin, end, in, out);
}
#endif
}
"""

DTYPES = {1: np.float32, 11: np.float64, 9: np.bool_, 7: np.int64}
_BUILD = Path(tempfile.mkdtemp(prefix="graphopt_fused_test_"))
_LOADED: dict[tuple, "Kernel"] = {}


class Kernel:
    """A compiled fragment: its declared signature, and `run` / `reduce` on numpy arrays."""

    def __init__(self, fragment: str, flags: tuple[str, ...] = FLAGS):
        key = hashlib.sha256((fragment + " ".join(flags)).encode()).hexdigest()[:20]
        source, library = _BUILD / f"{key}.cpp", _BUILD / f"{key}.so"
        source.write_text(fragment + WRAPPER)
        result = subprocess.run([COMPILER, *COMMON, *flags, str(source), "-o", str(library)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise AssertionError(f"the fragment does not compile:\n{result.stderr}\n{fragment}")
        self.lib = ctypes.CDLL(str(library))
        info = (ctypes.c_int * 64)()
        self.reduction = bool(self.lib.graphopt_test_info(info))
        self.num_inputs, self.num_outputs, self.elementwise = info[0], info[1], info[2]
        self.input_types = [DTYPES[info[3 + k]] for k in range(self.num_inputs)]
        self.output_types = [DTYPES[info[3 + self.num_inputs + k]] for k in range(self.num_outputs)]

    def _pointers(self, arrays: list[np.ndarray], dtypes) -> ctypes.Array:
        for array, dtype in zip(arrays, dtypes):
            assert array.dtype == dtype and array.flags.c_contiguous, (array.dtype, dtype)
        return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray] | None = None,
            begin: int = 0, end: int | None = None) -> list[np.ndarray]:
        """The kernel over ``[begin, end)`` of the flat inputs (scalars as 0-d arrays); new output arrays
        unless ``outputs`` (which may be the inputs themselves) are given."""
        assert len(inputs) == self.num_inputs and not self.reduction
        n = inputs[0].size
        if outputs is None:
            outputs = [np.zeros(n, dtype) for dtype in self.output_types]
        self.lib.graphopt_test_kernel(ctypes.c_int64(begin), ctypes.c_int64(n if end is None else end),
                                      self._pointers(inputs, self.input_types),
                                      self._pointers(outputs, self.output_types))
        return outputs

    def reduce(self, inputs: list[np.ndarray], begin: int = 0, end: int | None = None) -> float:
        assert len(inputs) == self.num_inputs and self.reduction
        self.lib.graphopt_test_reduce.restype = ctypes.c_double
        end = inputs[0].size if end is None else end
        return self.lib.graphopt_test_reduce(ctypes.c_int64(begin), ctypes.c_int64(end),
                                             self._pointers(inputs, self.input_types))


def compiled(fragment: str, flags: tuple[str, ...] = FLAGS) -> Kernel:
    """The fragment compiled with ``flags`` (once per fragment and flags)."""
    if (fragment, flags) not in _LOADED:
        _LOADED[fragment, flags] = Kernel(fragment, flags)
    return _LOADED[fragment, flags]


def gcc_vectorizes(fragment: str) -> bool | None:
    """Whether GCC at the native harness's flags vectorizes the fragment's element loop (None: not GCC)."""
    version = subprocess.run([COMPILER, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:
        return None
    key = hashlib.sha256(fragment.encode()).hexdigest()[:20]
    source = _BUILD / f"{key}_vec.cpp"
    source.write_text(fragment + WRAPPER)
    result = subprocess.run([COMPILER, *COMMON, *NATIVE_FLAGS, "-fopt-info-vec-optimized", str(source), "-o",
                             str(_BUILD / f"{key}_vec.so")], capture_output=True, text=True)
    return "loop vectorized" in result.stderr
