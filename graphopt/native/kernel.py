"""A compiled fused kernel: the library, its op, and session options that load it into ONNX Runtime."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from graphopt.native import cache
from graphopt.native.availability import unsupported_reason
from graphopt.native.build import build_library
from graphopt.native.errors import FusedBuildError, UnsafeCacheError

DOMAIN = "ai.graphopt.fused"
"""The ONNX domain of every fused op (a model using one imports it at version 1)."""

LOADED_KEY = "graphopt.fused_kernel"
"""Session config entry naming the fused-kernel library some session options already load."""

_OP_NAME = re.compile(r'^\s*#\s*define\s+GRAPHOPT_OP_NAME\s+"([A-Za-z_][A-Za-z0-9_]*)"', re.MULTILINE)


@dataclass(frozen=True)
class Kernel:
    """A custom-op library holding one op, ``domain``/``op_name``, built from a kernel fragment."""

    library_path: Path
    op_name: str
    domain: str = DOMAIN

    def session_options(self, options: ort.SessionOptions | None = None) -> ort.SessionOptions:
        """``options`` (default: new ones) with this kernel's library registered, after checking it again.

        One session loads one fused kernel: onnxruntime accepts a custom domain from one library per session
        ("Domain already set in registry"), and every kernel's op is in domain ``ai.graphopt.fused``.
        """
        options = options if options is not None else ort.SessionOptions()
        loaded = _loaded(options)
        if loaded:
            raise FusedBuildError(f"these session options already load the fused kernel {loaded}; onnxruntime takes "
                                  f"domain {self.domain} from one library per session, so each fused kernel needs "
                                  "its own session")
        why = cache.problem(self.library_path)
        if why is not None:
            raise UnsafeCacheError(f"not loading the fused kernel {self.library_path}: {why}")
        try:
            options.register_custom_ops_library(str(self.library_path))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FusedBuildError(f"onnxruntime {ort.__version__} could not load the fused kernel "
                                  f"{self.library_path}: {exc}") from exc
        options.add_session_config_entry(LOADED_KEY, str(self.library_path))
        return options


def compile_kernel(fragment: str) -> Kernel:
    """Build (or find in the cache) the custom-op library for a kernel fragment (see FUSED_CONTRACT.md).

    Raises `FusedBuildError` when fused kernels are off (`unsupported_reason`) or the fragment does not compile
    (the message carries the compiler's), `UnsafeCacheError` when the cache folder is not safe to load from.
    """
    unsupported = unsupported_reason()
    if unsupported:
        raise FusedBuildError(f"fused kernels are off: {unsupported}")
    match = _OP_NAME.search(fragment)
    if match is None:
        raise FusedBuildError('the kernel fragment defines no GRAPHOPT_OP_NAME (#define GRAPHOPT_OP_NAME "Fused_...")')
    return Kernel(build_library(fragment), match.group(1))


def _loaded(options: ort.SessionOptions) -> str | None:
    try:
        return options.get_session_config_entry(LOADED_KEY) or None
    except RuntimeError:  # onnxruntime: "SessionOptions does not have configuration with key"
        return None
