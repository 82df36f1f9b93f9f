"""The ONNX-standard training form: an inference model plus a ``TrainingInfoProto``.

    model = with_training_info(inference, step, state)   # what Trainer.export(kind="training_info") writes
    session = TrainingSession(model)                     # runs it with plain onnxruntime
    loss = session.step({"x": x, "labels": y})

The ``algorithm`` graph is the training-step model (`graphopt.training.step`). Per the
ONNX specification it runs as the concatenation of the inference graph and itself, so
it reads the parameters and running statistics straight from the inference graph's
initializers; the optimizer state (slots, step counts, hyperparameters) are its own
initializers; its node outputs that would clash with the inference graph's are
renamed ``train/<name>``. ``update_binding`` maps every parameter, buffer, slot and
step count to the output holding its new value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from graphopt import names
from graphopt.optim.serial import serialized
from graphopt.preparation import loaded
from graphopt.runtime import resolve_providers
from graphopt.training.step import trainable_as_inputs


def with_training_info(inference: onnx.ModelProto, step: onnx.ModelProto,
                       state: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``inference`` (holding the current parameters and buffers) with ``step`` as its training
    algorithm; ``state`` holds the values of the step's other state inputs (slots, steps, hypers)."""
    main = inference.graph
    main_values = {v.name for v in main.input} | {t.name for t in main.initializer}
    main_values |= {o for n in main.node for o in n.output} | {o.name for o in main.output}
    algorithm = ir.serde.deserialize_model(step).graph
    for node in algorithm:
        for out in node.outputs:
            if out.name in main_values:
                out.name = f"train/{out.name}"
    shared = [v for v in algorithm.inputs if v.name in main_values]  # data inputs, parameters, buffers
    for value in shared:
        algorithm.inputs.remove(value)
    for name in [name for name in algorithm.initializers if name in main_values]:
        algorithm.initializers.pop(name)  # the inference graph's own constants, read from there
    for value in [v for v in algorithm.inputs if v.name in state]:
        algorithm.inputs.remove(value)
        value.const_value = ir.tensor(np.asarray(state[value.name]), name=value.name)
        algorithm.register_initializer(value)
    graph = ir.serde.serialize_graph(algorithm)
    del graph.value_info[:]
    mutable = {t.name for t in main.initializer} | {t.name for t in graph.initializer}
    result = onnx.ModelProto()
    result.CopyFrom(inference)
    info = result.training_info.add()
    info.algorithm.CopyFrom(graph)
    outputs = {out.name.removeprefix("train/"): out.name for out in graph.output}
    for key in sorted(mutable):
        if names.new(key) in outputs:
            info.update_binding.add(key=key, value=outputs[names.new(key)])
    return result


class TrainingSession:
    """Runs the ``TrainingInfoProto`` of a model with onnxruntime, keeping its mutable state.

    ``state`` holds every initializer of the inference graph and of the algorithm by
    name; changing a hyperparameter is ``session.state["group0.lr"] = np.array(1e-3)``.
    External data, of the inference graph and of the TrainingInfoProto alike, is read from
    the model file's folder, or from ``base_dir`` for a ``ModelProto`` loaded without it
    (`graphopt.preparation.loaded`), never from the working directory.

    ``step``, ``evaluate`` and ``export`` hold the session's lock: steps from several threads
    run one after another, each starting from the state the one before left.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, providers: Sequence[Any] | None = None, *,
                 base_dir: str | os.PathLike | None = None):
        self._lock = threading.RLock()  # taken by step, evaluate and export (graphopt.optim.serial)
        self.model = loaded(model, "TrainingSession", base_dir)
        if len(self.model.training_info) != 1:
            raise ValueError(f"TrainingSession: expected one TrainingInfoProto, the model has "
                             f"{len(self.model.training_info)}")
        info = self.model.training_info[0]
        main, algorithm = self.model.graph, info.algorithm
        self.state = {t.name: numpy_helper.to_array(t).copy() for t in [*main.initializer, *algorithm.initializer]}
        self.update_binding = {e.key: e.value for e in info.update_binding}
        unknown = sorted(set(self.update_binding) - set(self.state))
        if unknown:
            raise ValueError(f"TrainingSession: update_binding names {unknown}, which are not initializers")
        self._fed = sorted(set(self.update_binding) | {t.name for t in algorithm.initializer})
        self.loss = algorithm.output[0].name
        self._session = _session(_combined(self.model, self._fed, self.state), providers)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._inference = None
        self._providers = providers

    @serialized
    def step(self, inputs: Mapping[str, np.ndarray]) -> float:
        """One run of the algorithm; the bound initializers take their new values. Returns the loss."""
        results = dict(zip(self._outputs, self._session.run(None, {**inputs, **{k: self.state[k] for k in self._fed}})))
        for key, value in self.update_binding.items():
            self.state[key] = results[value]
        return float(results[self.loss])

    @serialized
    def evaluate(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inference graph's outputs with the current state."""
        main = {t.name for t in self.model.graph.initializer}
        mutable = [k for k in self.update_binding if k in main]
        if self._inference is None:
            inference = onnx.ModelProto()
            inference.CopyFrom(self.model)
            del inference.training_info[:]
            self._inference = _session(trainable_as_inputs(inference, mutable), self._providers)
        names_ = [o.name for o in self._inference.get_outputs()]
        return dict(zip(names_, self._inference.run(names_, {**inputs, **{k: self.state[k] for k in mutable}})))

    @serialized
    def export(self, path: str | os.PathLike | None = None) -> onnx.ModelProto:
        """The model with the current state written into its initializers."""
        result = onnx.ModelProto()
        result.CopyFrom(self.model)
        for tensor in [*result.graph.initializer, *result.training_info[0].algorithm.initializer]:
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(self.state[tensor.name]), tensor.name))
        if path is not None:
            onnx.save(result, os.fspath(path))
        return result


def _combined(model: onnx.ModelProto, fed: list[str], state: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The inference graph followed by the algorithm, with the ``fed`` initializers as inputs,
    the algorithm's outputs as outputs, and inference nodes the algorithm does not use left out."""
    main, algorithm = model.graph, model.training_info[0].algorithm
    graph = onnx.GraphProto(name="training")
    graph.input.extend([*main.input, *algorithm.input])
    graph.input.extend(_value_info(name, state[name]) for name in fed)
    graph.initializer.extend(t for t in [*main.initializer, *algorithm.initializer] if t.name not in set(fed))
    graph.node.extend(_needed([*main.node, *algorithm.node], {o.name for o in algorithm.output}))
    graph.output.extend(algorithm.output)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    value = np.asarray(value)
    return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)


def _needed(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(node.input)
    return kept[::-1]


def _session(model: onnx.ModelProto, providers) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=resolve_providers(providers))
