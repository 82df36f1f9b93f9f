"""`StagedExecutable`: the stages of a split model (`graphopt.training.stages`) as sessions run one after another.

`run` binds each stage's inputs and outputs as `Executable.run` does, passes the values a stage hands to later
ones as ONNX Runtime values that stay where the provider made them (no copy to numpy, none back), drops each
once its last reader has run, and calls ``after(k)`` once stage ``k`` has written its outputs: there the
caller starts work on them (an allreduce of a bucket of gradients) while the next stage computes.

The stages' threads spin between the operators of a run and stop when it returns (``spinning="during_run"``):
spinning after it, they would take the cores from the next stage and from the thread that communicates; never
spinning, they must be woken for every operator, which cost a two-thread ResNet-18 forward and backward pass in
stages 731 ms against 577 (median of 15; the whole model 592).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnxruntime as ort

from graphopt.runtime.buffer import bind_input, bind_output
from graphopt.runtime.session import Array, Runtime
from graphopt.training.stages import Split


class StagedExecutable:
    """``split``'s stages compiled by ``runtime``; ``inputs`` / ``outputs`` (onnxruntime's NodeArgs by name),
    ``input_names`` / ``output_names`` as an `Executable`'s, for the whole model (what the caller feeds and
    reads)."""

    def __init__(self, runtime: Runtime, split: Split):
        self.stages = split.stages
        self.shared = split.shared
        self.device = runtime.device
        self.executables = [runtime.compile(stage.model, spinning="during_run") for stage in split.stages]
        internal = {name for stage in split.stages for name in (*stage.received, *stage.shared)}
        self.inputs = {name: info for executable in self.executables for name, info in executable.inputs.items()
                       if name not in internal}
        self.input_names = tuple(self.inputs)
        self.output_names = tuple(name for stage in split.stages for name in stage.finals)
        self.outputs = {name: executable.outputs[name] for stage, executable in zip(split.stages, self.executables)
                        for name in stage.finals}
        self._last_reader = {name: k for k, stage in enumerate(split.stages) for name in stage.received}

    def run(self, inputs: Mapping[str, Array], outputs: Mapping[str, Array],
            after: Callable[[int], None] | None = None) -> None:
        """Every stage in order, with the model's inputs from ``inputs`` and its outputs written into ``outputs``;
        ``after(k)`` once stage ``k`` ran."""
        passed: dict[str, object] = {}
        for k, (stage, executable) in enumerate(zip(self.stages, self.executables)):
            binding = executable.session.io_binding()
            for name in executable.input_names:
                value = passed[name] if name in passed else self.shared.get(name)
                if isinstance(value, ort.OrtValue):
                    binding.bind_ortvalue_input(name, value)
                else:
                    bind_input(binding, name, inputs[name] if value is None else value)
            finals = stage.finals
            for name in finals:
                bind_output(binding, name, outputs[name])
            handed = [name for name in stage.passed if name not in finals]
            for name in handed:
                binding.bind_output(name, self.device.kind, self.device.index)
            executable.session.run_with_iobinding(binding)
            passed.update(zip(handed, binding.get_outputs()[len(finals):]))
            passed.update((name, outputs[name]) for name in stage.passed if name in finals)
            for name in [n for n in passed if self._last_reader.get(n, -1) <= k]:
                del passed[name]  # its last reader ran: free it now
            if after is not None:
                after(k)

