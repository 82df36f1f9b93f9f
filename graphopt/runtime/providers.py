"""Choosing ONNX Runtime execution providers, and the device they put buffers on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Device:
    """Where a runtime keeps its buffers: ``("cpu", 0)`` or ``("cuda", id)``."""

    kind: str = "cpu"
    index: int = 0

    @property
    def is_host(self) -> bool:
        return self.kind == "cpu"


def provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def resolve_providers(providers: str | Sequence[Any] | None) -> list[Any]:
    """``providers`` as onnxruntime takes them; CPU when None; unknown names raise."""
    if providers is None:
        return [CPU]
    if isinstance(providers, (str, tuple)):
        providers = [providers]
    providers = list(providers)
    available = ort.get_available_providers()
    for provider in providers:
        name = provider_name(provider)
        if name not in available:
            raise ValueError(f"providers: {name!r} is not available in this onnxruntime build "
                             f"(available: {', '.join(available)}); for CUDA install graphopt[cuda]")
    if not providers:
        raise ValueError("providers: expected at least one execution provider")
    return providers


def device_of(providers: Sequence[Any]) -> Device:
    """The device of the first provider: CUDA's device_id option, else the host."""
    first = providers[0]
    if provider_name(first) == CUDA:
        options = first[1] if isinstance(first, tuple) else {}
        return Device("cuda", int(options.get("device_id", 0)))
    return Device()


def cuda_available() -> bool:
    """Whether onnxruntime here has the CUDA provider (a GPU may still be missing)."""
    return CUDA in ort.get_available_providers()
