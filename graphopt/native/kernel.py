"""A compiled fused-kernel library: its path, its ops, and session options that load it into ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from graphopt.native import cache
from graphopt.native.availability import unsupported_reason
from graphopt.native.build import build_library, op_name
from graphopt.native.errors import FusedBuildError, UnsafeCacheError

DOMAIN = "ai.graphopt.fused"
"""The ONNX domain of every fused op (a model using one imports it at version 1)."""

LOADED_KEY = "graphopt.fused_kernel"
"""Session config entry naming the fused-kernel library some session options already load."""

@dataclass(frozen=True)
class Kernel:
    """A custom-op library holding the ops ``op_names`` of ``domain``, one per kernel fragment it was built from."""

    library_path: Path
    op_names: tuple[str, ...]
    domain: str = DOMAIN

    @property
    def op_name(self) -> str:
        """The op of a library built from one fragment."""
        if len(self.op_names) != 1:
            raise ValueError(f"the fused-kernel library {self.library_path} holds {len(self.op_names)} ops, "
                             f"{list(self.op_names)}; name one of op_names")
        return self.op_names[0]

    def session_options(self, options: ort.SessionOptions | None = None) -> ort.SessionOptions:
        """``options`` (default: new ones) with this kernel's library registered, after checking it again.

        One session loads one fused-kernel library: onnxruntime accepts a custom domain from one library per session
        ("Domain already set in registry"), and every op is in domain ``ai.graphopt.fused``; a session that runs
        several kernels loads one library holding them all (`compile_kernels`).
        """
        options = options if options is not None else ort.SessionOptions()
        loaded = _loaded(options)
        if loaded:
            raise FusedBuildError(f"these session options already load the fused kernel {loaded}; onnxruntime takes "
                                  f"domain {self.domain} from one library per session, so each fused kernel needs its "
                                  "own session, unless one library holds them all (compile_kernels)")
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
    return compile_kernels([fragment])


def compile_kernels(fragments: Sequence[str]) -> Kernel:
    """One library holding an op per fragment (the same fragment given twice is one op), built or found in the
    cache as `compile_kernel`'s; its ``op_names`` sorted. Two different fragments of one op name are refused."""
    unsupported = unsupported_reason()
    if unsupported:
        raise FusedBuildError(f"fused kernels are off: {unsupported}")
    names = tuple(sorted({op_name(fragment) for fragment in fragments}))
    return Kernel(build_library(list(fragments)), names)


def _loaded(options: ort.SessionOptions) -> str | None:
    try:
        return options.get_session_config_entry(LOADED_KEY) or None
    except RuntimeError:  # onnxruntime: "SessionOptions does not have configuration with key"
        return None
