"""Runtime layer: ONNX Runtime sessions, providers and resident buffers."""

from graphopt.runtime.buffer import Buffer, Region, bind_input, bind_output
from graphopt.runtime.providers import CPU, CUDA, Device, cuda_available, resolve_providers
from graphopt.runtime.session import DEFAULT_CHUNK, Executable, Runtime

__all__ = ["Buffer", "CPU", "CUDA", "DEFAULT_CHUNK", "Device", "Executable", "Region", "Runtime", "bind_input",
           "bind_output", "cuda_available", "resolve_providers"]
