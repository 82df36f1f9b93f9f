"""`Runtime` compiles ONNX models into sessions; `Executable` runs one with IOBinding."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.runtime.buffer import Buffer, Region, bind_input, bind_output
from graphopt.runtime.providers import Device, device_of, provider_name, resolve_providers

Array = np.ndarray | Buffer | Region


class Executable:
    """One ONNX Runtime session; `run` binds host arrays and buffers by name, zero-copy.

    ``optimized`` is the graph the session executes, after ONNX Runtime's own rewrites
    (fusions, eliminated transposes, its node order), without the values of large
    initializers; None unless `Runtime.compile` was asked to keep it.
    """

    def __init__(self, session: ort.InferenceSession, optimized: onnx.ModelProto | None = None):
        self.session = session
        self.optimized = optimized
        self.inputs = {i.name: i for i in session.get_inputs()}  # name -> onnxruntime NodeArg (type, shape)
        self.outputs = {o.name: o for o in session.get_outputs()}
        self.input_names = tuple(self.inputs)
        self.output_names = tuple(o.name for o in session.get_outputs())

    def run(self, inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> None:
        """Run with every input and output bound; outputs are written into the given arrays."""
        binding = self.session.io_binding()
        for name in self.input_names:
            bind_input(binding, name, inputs[name])
        for name in self.output_names:
            bind_output(binding, name, outputs[name])
        self.session.run_with_iobinding(binding)


DEFAULT_CHUNK = 32768
"""Elements per row of a chunked update. Chosen by measurement (docs/PERFORMANCE.md):
the ~10 row-sized intermediates of an update stay in a core's L2 cache."""


class Runtime:
    """Execution providers, threads and chunk size for compiled graphs.

    ``threads`` is how many threads a chunked update runs on: row ranges of its standard
    operators at once, or a fused kernel's parts on its session's threads (default: the CPU
    count on the host, 1 on a GPU); given, it is also the
    intra-op thread count of every other session (a Trainer's forward and backward: set it to
    cores / processes when several processes share a machine), else ONNX Runtime chooses;
    ``chunk_size`` is the row length. ``device_buffers`` keeps optimizer state in
    buffers ONNX Runtime allocates on the provider's device (default: on a GPU), so
    it stays there between steps; on the host it exercises the same code path.
    ``fused`` runs each chunked update as one generated C++ kernel (`graphopt.fused`): None (the
    default) where a C++ compiler is found, on the CPU, unless the environment sets
    ``GRAPHOPT_FUSED=0``; False never; True as None but says why when it cannot.
    ``sessions_built`` counts sessions created, so callers can check that changing a
    hyperparameter reused the compiled update.
    """

    def __init__(self, providers: str | Sequence[Any] | None = None, *, threads: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK, device_buffers: bool | None = None, fused: bool | None = None):
        self.providers = resolve_providers(providers)
        self.device: Device = device_of(self.providers)
        self.device_buffers = not self.device.is_host if device_buffers is None else bool(device_buffers)
        self.threads = int(threads or (os.cpu_count() or 1 if self.device.is_host else 1))
        if self.threads < 1:
            raise ValueError(f"Runtime: threads must be >= 1, got {threads}")
        self.session_threads = self.threads if threads else 0  # 0: ONNX Runtime's choice
        if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size % 16:
            raise ValueError(f"Runtime: chunk_size must be a positive multiple of 16, got {chunk_size!r}")
        self.chunk_size = chunk_size
        if fused not in (None, True, False):
            raise ValueError(f"Runtime: fused must be True, False or None, got {fused!r}")
        self.fused = fused
        self.sessions_built = 0

    def compile(self, model: onnx.ModelProto, *, intra_op_threads: int = 0, keep_optimized: bool = False,
                kernel: Any = None, spinning: bool | str = True) -> Executable:
        """A session for ``model``; ``intra_op_threads`` 0: the runtime's ``threads`` if given, else
        ONNX Runtime uses every core. ``spinning`` False: the session's idle threads sleep at once
        instead of spinning a while for the next work (so they leave the cores to the next session);
        ``"during_run"``: they spin between the operators of a run and stop when it returns (sessions run one
        after another, whose threads would otherwise sleep and be woken for every operator).
        ``keep_optimized`` keeps the graph the session runs as ``Executable.optimized``, which
        is what a proof that two bound buffers may alias must look at (`graphopt.update.inplace`).
        ``kernel`` (a `graphopt.native.Kernel`) is the fused kernel the model's custom node needs."""
        serialized = model.SerializeToString()
        intra_op_threads = intra_op_threads or self.session_threads
        session = optimized = None
        if keep_optimized:
            try:
                session, optimized = self._session_keeping_optimized(serialized, self._options(intra_op_threads,
                                                                                              kernel, spinning))
            except Exception:  # noqa: BLE001 - a provider that cannot save its graph: then nothing is proven
                pass
        if session is None:
            session = ort.InferenceSession(serialized, self._options(intra_op_threads, kernel, spinning),
                                           providers=self.providers)
        wanted = provider_name(self.providers[0])
        if wanted not in session.get_providers():  # onnxruntime falls back to the CPU silently
            raise RuntimeError(f"providers: {wanted} could not be initialised (no usable GPU?); "
                               f"the session got {session.get_providers()}")
        self.sessions_built += 1
        return Executable(session, optimized)

    def _options(self, intra_op_threads: int, kernel: Any = None, spinning: bool | str = True) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif spinning == "during_run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        return options if kernel is None else kernel.session_options(options)

    def _session_keeping_optimized(self, serialized: bytes, options: ort.SessionOptions):
        """A session and the optimized graph it saved (large initializers left in a side file)."""
        with tempfile.TemporaryDirectory(prefix="graphopt-") as folder:
            options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            session = ort.InferenceSession(serialized, options, providers=self.providers)
            return session, onnx.load(options.optimized_model_filepath, load_external_data=False)

    def zeros(self, size: int, dtype: np.dtype) -> np.ndarray | Buffer:
        """A flat zeroed buffer for state: a `Buffer` with ``device_buffers``, else a numpy array."""
        return Buffer(size, dtype, self.device) if self.device_buffers else np.zeros(size, dtype)
