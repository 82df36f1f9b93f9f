"""Errors of the native layer: a fused kernel that cannot be built, or a cache that cannot be trusted."""

from __future__ import annotations


class FusedBuildError(RuntimeError):
    """A fused kernel could not be built or loaded here; callers fall back to standard ONNX operators.

    ``compiler_output`` holds the compiler's diagnostics when the compiler rejected the source.
    """

    def __init__(self, message: str, compiler_output: str = ""):
        super().__init__(message)
        self.compiler_output = compiler_output


class UnsafeCacheError(FusedBuildError):
    """The kernel cache folder, or a library in it, could have been written by another user: nothing is loaded."""
