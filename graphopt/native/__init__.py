"""Native layer: kernel fragments compiled into ONNX Runtime custom-op libraries (fused update kernels).

The usual sequence, in an executor::

    status = native.available()
    if status:
        kernel = native.compile_kernel(fragment)          # FusedBuildError -> native.warn_fallback(str(error))
        session = ort.InferenceSession(model, kernel.session_options())
    else:
        native.warn_fallback(status.reason)

Modules: ``ort_api.h`` (our declarations of the ONNX Runtime C API), ``harness.cpp`` (the custom op around a
fragment), `compiler` (which compiler, which flags), `cache` (the per-user folder and its checks), `build`
(compiling once per source), `kernel` (`Kernel`, `compile_kernel`, `compile_kernels`: several ops in one library),
``op_entry.inc`` (pasted after each fragment), `availability`.
"""

from graphopt.native.availability import Availability, available, unsupported_reason, warn_fallback
from graphopt.native.build import ORT_API_VERSION
from graphopt.native.errors import FusedBuildError, UnsafeCacheError
from graphopt.native.kernel import DOMAIN, Kernel, compile_kernel, compile_kernels

__all__ = ["Availability", "DOMAIN", "FusedBuildError", "Kernel", "ORT_API_VERSION", "UnsafeCacheError",
           "available", "compile_kernel", "compile_kernels", "unsupported_reason", "warn_fallback"]
