"""`Trainer`: train an ONNX model with a graphopt optimizer, one ONNX Runtime call per step.

    trainer = graphopt.Trainer("model.onnx", loss="loss", optimizer=optim.Adam(lr=1e-3))
    for batch in batches:
        loss = trainer.step({"x": batch.x, "t": batch.t})
    trainer.export("trained.onnx", kind="inference")

The model computes its own scalar loss output (its inputs include the labels). The
trainable initializers (all float ones by default) become graphopt `Parameter` s in
the optimizer's flat buffers; each step runs the training-step model
(`graphopt.training_step`) with parameters and state bound in place where proven
safe. They form one param group of the optimizer: its ``lr_mult`` / ``decay_mult``,
``state_dict`` and hyperparameter changes work as with the facade, and changing a
value never recompiles.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.inplace import in_place_pairs
from graphopt.optim.execution import TensorBindings, in_place_candidates
from graphopt.optim.optimizer import Optimizer
from graphopt.parameter import Parameter
from graphopt.runtime import Executable
from graphopt.training_step import build_training_step, trainable_as_inputs
from graphopt.update import GroupSpec, ParamSpec


class Trainer:
    """Forward, backward and update of ``model`` as one ONNX Runtime call per ``step``.

    Args:
        model: an ``onnx.ModelProto`` or a path to one.
        loss: the name of a float scalar output of the model.
        optimizer: a graphopt optimizer constructed without parameters, e.g.
            ``optim.Adam(lr=1e-3)``; the trainer adds the trainable parameters as one group.
        trainable: names of the initializers to train (default: every float initializer).
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, loss: str, optimizer: Optimizer,
                 trainable: Sequence[str] | None = None):
        self.model = onnx.load(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else model
        if optimizer.param_groups:
            raise ValueError("Trainer: pass an optimizer without parameters (e.g. optim.Adam(lr=1e-3)); "
                             "the trainer adds the model's trainable initializers to it")
        initializers = {t.name: t for t in self.model.graph.initializer}
        if trainable is None:
            trainable = [name for name, t in initializers.items() if numpy_helper.to_array(t).dtype.kind == "f"]
        unknown = [name for name in trainable if name not in initializers]
        if unknown:
            raise ValueError(f"Trainer: trainable {unknown} are not initializers of the model")
        self.loss = loss
        self.parameters = {name: Parameter(numpy_helper.to_array(initializers[name]), name=name) for name in trainable}
        optimizer.add_param_group({"params": list(self.parameters.values())})
        self.optimizer = optimizer
        self._compiled: dict[tuple, tuple[onnx.ModelProto, Executable, set]] = {}
        self._evaluation: Executable | None = None

    def _training_step(self):
        """The layouts of this step and the training-step model compiled for their structure."""
        layouts = self.optimizer._layouts()  # noqa: SLF001 - the trainer drives the optimizer's buffers
        specs = tuple(GroupSpec(layout.group, layout.transform,
                                tuple(ParamSpec(name, p.shape, p.dtype) for flat, names_ in
                                      zip(layout.flats, layout.names_of) for p, name in zip(flat.params, names_)))
                      for layout in layouts)
        if specs not in self._compiled:
            model = build_training_step(self.model, self.loss, specs)
            pairs = [pair for spec in specs for pair in in_place_candidates(spec.params, spec.transform.all_slots())]
            executable = self.optimizer._runtime.compile(model)  # noqa: SLF001
            self._compiled[specs] = (model, executable, in_place_pairs(model.graph, pairs))
        return layouts, specs, self._compiled[specs]

    def step(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None = None) -> float:
        """Run forward, backward and update on one batch; return the loss before the update.

        ``inputs`` feeds the model's graph inputs by name; ``labels``, if given, feeds
        the input named ``labels``.
        """
        layouts, specs, (_, executable, safe) = self._training_step()
        feeds = dict(inputs) if labels is None else {**inputs, "labels": labels}
        loss = np.empty((), _loss_dtype(executable))
        bindings = []
        for layout, spec in zip(layouts, specs):
            active = [(flat, i) for flat in layout.flats for i in range(len(flat.params))]
            bindings.append(TensorBindings(layout.group, active, spec.params, spec.transform.all_slots(),
                                           layout.hypers, safe))
        all_feeds = {k: v for b in bindings for k, v in b.feeds.items()}
        missing = [n for n in executable.input_names if n not in all_feeds and n not in feeds]
        if missing:
            raise ValueError(f"Trainer.step: missing inputs {missing}")
        outputs = {self.loss: loss, **{k: v for b in bindings for k, v in b.outputs.items()}}
        executable.run({**feeds, **all_feeds}, outputs)
        for b in bindings:
            b.finish()
            b.commit()
        return float(loss)

    def evaluate(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for ``inputs``, with the current parameters."""
        if self._evaluation is None:
            model = trainable_as_inputs(self.model, list(self.parameters))
            self._evaluation = self.optimizer._runtime.compile(model)  # noqa: SLF001
        feeds = {**inputs, **{name: p.data for name, p in self.parameters.items()}}
        names = list(self._evaluation.output_names)
        return dict(zip(names, self._evaluation.session.run(names, feeds)))

    def export(self, path: str | os.PathLike | None = None, kind: str = "step") -> onnx.ModelProto:
        """``"step"``: the training-step model (see `graphopt.training_step` for its I/O);
        ``"inference"``: the model with the trained weights as its initializers."""
        if kind == "step":
            model = self._training_step()[2][0]
        elif kind == "inference":
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for tensor in model.graph.initializer:
                if tensor.name in self.parameters:
                    tensor.CopyFrom(numpy_helper.from_array(self.parameters[tensor.name].data, tensor.name))
        else:
            raise ValueError(f"Trainer.export: kind must be 'step' or 'inference', got {kind!r}")
        if path is not None:
            onnx.save(model, os.fspath(path))
        return model


def _loss_dtype(executable: Executable) -> np.dtype:
    first = executable.session.get_outputs()[0]
    return np.dtype({"tensor(float)": np.float32, "tensor(double)": np.float64,
                     "tensor(float16)": np.float16}[first.type])
