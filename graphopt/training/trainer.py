"""`Trainer`: train an ONNX model with a graphopt optimizer, one ONNX Runtime call per step.

    trainer = graphopt.Trainer("model.onnx", loss=losses.cross_entropy("logits"),
                               optimizer=optim.Adam(lr=1e-3))
    for x, y in batches:
        loss = trainer.step({"x": x}, labels=y)
    trainer.export("trained.onnx", kind="inference")

The loss is a built-in one (`graphopt.losses`) attached to a model output, or the name
of a float scalar the model computes itself. The trainable initializers (by default the
model's weights, not running statistics nor an exporter's constants) become graphopt `Parameter` s in the
optimizer's flat buffers; BatchNormalization and Dropout run in training mode, and
the running statistics are updated by each step as in torch's ``train()`` mode.
Each step runs the training-step model (`graphopt.training.step`) with parameters
and state bound in place where proven safe. Parameters form the param groups given
by ``groups``; ``lr_mult`` / ``decay_mult``, ``state_dict`` and hyperparameter
changes work as with the facade, and changing a value never recompiles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt import names
from graphopt.autodiff import differentiable_initializers
from graphopt.update.inplace import implicit_inputs, proven_in_place
from graphopt.training.losses import Loss
from graphopt.optim.execution import NewSlots, TensorBindings, in_place_candidates
from graphopt.optim.optimizer import Optimizer
from graphopt.optim import validation
from graphopt.optim.serial import serialized
from graphopt.parameter import Parameter
from graphopt.preparation import (
    Selector,
    default_trainable,
    float_initializers,
    loaded,
    matching,
    normalized,
    select_trainable,
    to_training_mode,
    untie_running_statistics,
    weights_as_initializers,
)
from graphopt.runtime import Executable, Region, Runtime
from graphopt.fused.runtime import fused_training_step, runs_fused
from graphopt.training.grad_scaler import GradScaler
from graphopt.training.info import with_training_info
from graphopt.training.step import build_gradients, build_training_step, trainable_as_inputs
from graphopt.update import GroupSpec, ParamSpec
from graphopt.update.guard import SCALE, Guard

KINDS = ("step", "training_info", "inference")
FUSED_STEPS = ("graph", "two_calls")
DEFAULT_FUSED_STEP = "graph"  # the lead measures both (tools/bench.py --sections training) and may flip this
"""How a step runs where the optimizer's runtime fuses its updates, unless ``Trainer(fused_step=...)`` says:
``"graph"``, one training-step graph whose update is the fused kernels' custom nodes (one ONNX Runtime call);
``"two_calls"``, forward and backward writing the gradients into the flat buffers, then the fused update."""


class Trainer:
    """Forward, backward and update of ``model`` as one ONNX Runtime call per ``step``.

    Args:
        model: an ``onnx.ModelProto`` or a path to one, of any opset and IR version: it is
            first `graphopt.preparation.normalized` (functions inlined, the pinned opset and IR
            version), then the loss and training mode are added.
        loss: a `graphopt.losses.Loss` (which adds a ``labels`` input), or the name of a
            float scalar output of the model.
        optimizer: a graphopt optimizer constructed without parameters, e.g. ``optim.Adam(lr=1e-3)``.
        trainable: names or ``fnmatch`` patterns of the initializers to train, constants included
            (default: the model's weights among the float initializers the loss depends on through
            a differentiable input, so not running statistics, Dropout ratios, Clip bounds or
            constant exponents; the weights are the parameters the model records, as
            `graphopt.from_torch` does, else all but what looks like an exporter's constant:
            scalars, masks, GroupNorm's helpers, see `preparation.exporter_constants`);
            ``frozen`` removes matches from those.
        groups: param groups, as ``[{"params": "conv*", "lr_mult": 0.1}, ...]``: ``params`` is a
            name, a pattern or a list of them; a parameter joins the first group it matches and
            the parameters no group matches form one last group with the optimizer's defaults.
        promote_constants: turn float Constant / ConstantOfShape outputs into trainable
            initializers: True for all (then chosen by the default rule above, which leaves
            scalars out), or a list of names (trained by default, whatever they look like).
            Promoted in any case
            (`graphopt.preparation.implicit_initializers`): the running statistics a
            BatchNormalization reads from such nodes, and every float ConstantOfShape of a
            constant shape (a weight stored as its fill value, as in old model-zoo files),
            then trained, or not, as initializers are.
        training_mode: run BatchNormalization (batch statistics, running statistics updated)
            and Dropout in training mode during steps; `evaluate` and the inference export
            keep the model's own mode.
        providers: ONNX Runtime execution providers for every session the trainer runs
            (default: the optimizer's, CPU unless it was built with others).
        base_dir: for a ``ModelProto`` whose external data was not loaded, the folder it is read
            from; a model given by path reads it from the file's folder (`preparation.loaded`;
            never from the working directory).
        skip_nonfinite: sets the optimizer's ``skip_nonfinite`` (default: leave it as built).
        grad_scaler: a `graphopt.training.GradScaler`: dynamic loss scaling as torch.amp's, done
            inside the training step. With it, or with ``skip_nonfinite``, a step whose gradients
            hold a NaN or inf is skipped inside the graph (parameters, optimizer state and step
            counts unchanged; the running statistics of that forward pass are kept, as in torch);
            ``found_inf`` and ``skipped_steps`` report it.
            After `accumulate`, the summed scaled gradients go through the scaler's eager
            ``step`` and ``update`` instead (torch's sequence for accumulated AMP steps).
        communicator: a `graphopt.distributed.Communicator` (``graphopt.distributed.init()``): data-parallel
            training. Parameters and running statistics are broadcast from rank 0 here; each ``step``
            then takes this process's shard of the batch, and gradients and running statistics are
            averaged over the processes before the same update everywhere
            (`graphopt.distributed.training`); see ``overlap`` for when each bucket's reduction overlaps the
            rest of the backward pass.
        shard_state: with ``communicator``, each process keeps and updates only its shard of the
            optimizer state (ZeRO-1, `graphopt.distributed.zero`); ``state_dict`` /
            ``load_state_dict`` then consolidate and slice it (collective: every process calls them).
        fused_step: where the optimizer's runtime runs fused update kernels (`fused_kernels`), how a step runs
            them: ``"graph"``, the training-step graph with the kernels' custom nodes in place of the
            standard-operator update (one ONNX Runtime call; `graphopt.fused.step`), or ``"two_calls"``,
            forward and backward writing the gradients into the optimizer's flat buffers, then its fused
            update. Default `DEFAULT_FUSED_STEP`. A step with a non-finite guard (``skip_nonfinite``, a grad
            scaler) runs two calls either way; exports are standard ONNX either way.
        overlap: with ``communicator``, whether the gradients' reduction (allreduce, or reduce-scatter with
            ``shard_state``) overlaps the backward pass, which then runs in stages (`graphopt.distributed.overlap`;
            default: yes, with more than one process). False: forward and backward in one call, then the
            reduction of whole buffers (docs/SCALING.md measures both).
        bucket_bytes: gradient bytes per reduction of the overlapped step (default
            `graphopt.distributed.overlap.BUCKET_BYTES`, 4 MiB).

    Thread safety: ``step``, ``accumulate``, ``state_dict``, ``load_state_dict``, ``evaluate`` and
    ``export`` hold the optimizer's re-entrant lock (as its own methods do), so calls from
    several threads run one after another.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, loss: Loss | str, optimizer: Optimizer, *,
                 trainable: Selector = None, frozen: Selector = None, groups: Sequence[Mapping[str, Any]] = (),
                 promote_constants: bool | Sequence[str] = False, training_mode: bool = True,
                 providers: Any = None, base_dir: str | os.PathLike | None = None,
                 grad_scaler: GradScaler | None = None, skip_nonfinite: bool | None = None,
                 communicator: Any = None, shard_state: bool = False, fused_step: str | None = None,
                 overlap: bool | None = None, bucket_bytes: int | None = None):
        label = f"model {os.fspath(model)!r}" if not isinstance(model, onnx.ModelProto) else \
            f"model (graph {model.graph.name!r})"
        model = loaded(model, "Trainer", base_dir)
        if optimizer.param_groups:
            raise ValueError("Trainer: pass an optimizer without parameters (e.g. optim.Adam(lr=1e-3)); "
                             "the trainer adds the model's trainable initializers to it")
        # converted first: the loss and training mode add nodes of the pinned opset
        self.model = untie_running_statistics(weights_as_initializers(normalized(model), promote_constants))
        self.labels = loss.labels if isinstance(loss, Loss) else None
        self._loss_spec = loss if isinstance(loss, Loss) else None
        loss_model, self.loss = _with_loss(self.model, loss)
        self._classes = self._loss_spec.classes(loss_model) if self._loss_spec is not None and \
            self._loss_spec.kind == "cross_entropy" else None
        if providers is not None:
            optimizer._use_runtime(Runtime(providers))
        self._train_model, updated = to_training_mode(loss_model) if training_mode else (loss_model, {})
        initializer_names = {t.name for t in self._train_model.graph.initializer}
        # what a batch feeds: the model's inputs (and the loss's labels)
        self._batch_inputs = [i.name for i in self._train_model.graph.input if i.name not in initializer_names]
        initializers = {t.name: t for t in self.model.graph.initializer}
        self.buffers = {name: numpy_helper.to_array(initializers[name]).copy() for name in updated}
        default = None if trainable is not None else self._default_trainable(frozen, promote_constants)
        trainable_names = select_trainable(self.model, trainable, frozen, default)
        if not trainable_names or trainable is not None and not set(trainable_names) & _upstream(loss_model, self.loss):
            raise ValueError(_nothing_to_train(label, self.loss, trainable, frozen, self.model, default,
                                               trainable_names))
        names.check_unambiguous([*trainable_names, *self.buffers], self._batch_inputs, f"Trainer ({label})")
        self.parameters = {name: Parameter(numpy_helper.to_array(initializers[name]), name=name)
                           for name in trainable_names}
        for group in _param_groups(trainable_names, groups):
            optimizer.add_param_group({**group, "params": [self.parameters[n] for n in group["params"]]})
        self.optimizer = optimizer
        if grad_scaler is not None and not isinstance(grad_scaler, GradScaler):
            raise TypeError(f"Trainer: grad_scaler must be a graphopt.training.GradScaler, got "
                            f"{type(grad_scaler).__name__}")
        self.grad_scaler = grad_scaler
        if skip_nonfinite is not None:
            validation.boolean("Trainer", "skip_nonfinite", skip_nonfinite)
            optimizer.skip_nonfinite = bool(skip_nonfinite)
        self._compiled: dict[tuple, tuple[onnx.ModelProto, Executable, set]] = {}
        self._gradients: tuple[bool, Executable] | None = None  # (loss scaled?, forward and backward)
        self._evaluation: Executable | None = None
        self._accumulating = False
        self._fused: bool | None = None  # decided at the first step (fused_kernels)
        self.communicator = communicator
        if fused_step is not None and fused_step not in FUSED_STEPS:
            raise ValueError(f"Trainer: fused_step must be one of {FUSED_STEPS} or None, got {fused_step!r}")
        self.fused_step = fused_step or DEFAULT_FUSED_STEP
        if communicator is not None and communicator.world_size > 1:
            from graphopt.distributed.training import broadcast_trainer
            broadcast_trainer(self, communicator)
        self._zero = None  # the sharded optimizer state (shard_state=True)
        if shard_state:
            from graphopt.distributed.training import shard_trainer_state
            self._zero = shard_trainer_state(self, communicator)
        from graphopt.distributed.training import overlap_setting
        self.overlap, self.bucket_bytes = overlap_setting(overlap, bucket_bytes, communicator)

    def _default_trainable(self, frozen: Selector, promoted: bool | Sequence[str]) -> list[str]:
        """The model's weights the loss depends on differentiably (`preparation.default_trainable`),
        and the constants promoted by name, which the user asked to train."""
        differentiable = differentiable_initializers(self._train_model, self.loss, frozen=frozen)
        named = set(promoted) if not isinstance(promoted, bool) else set()
        weights = set(default_trainable(self.model, differentiable))
        return [name for name in differentiable if name in weights or name in named]

    @property
    def _lock(self):
        """The optimizer's lock, which every public method holds (`graphopt.optim.serial`)."""
        return self.optimizer._lock

    # -- steps -------------------------------------------------------------------------

    @serialized
    def step(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None = None) -> float:
        """Forward, backward and update on one batch; the loss before the update.

        After `accumulate` calls, the update uses the sum of their gradients and this
        batch's (two ONNX Runtime calls: the gradients, then the optimizer's step). So does a
        step whose update runs fused as a second call (`fused_update`): the gradients are written
        straight into the optimizer's flat buffers, then its fused kernels update them in place. With
        ``fused_step="graph"`` (and no non-finite guard) the fused kernels run inside the training-step
        graph: one call.
        """
        if self.communicator is not None and (self.communicator.world_size > 1 or self._zero is not None):
            from graphopt.distributed.training import data_parallel_step
            return data_parallel_step(self, inputs, labels)
        in_graph = self.fused_kernels and not self.fused_update
        if self._accumulating or self.fused_update:
            loss = self._gradients_into_buffers(inputs, labels, "step")
            self._apply_accumulated()
            return loss
        layouts, specs, (_, executable, safe) = self._training_step(fused=in_graph)
        feeds = _checked(executable, self._feeds(inputs, labels), "step", self._batch_inputs)
        self._check_labels(feeds, "step")
        new_slots = NewSlots(self.optimizer._runtime.zeros)  # noqa: SLF001
        bindings = _bindings(layouts, specs, safe, new_slots)  # nothing written until everything is checked
        state_feeds = {k: v for b in bindings for k, v in b.feeds.items()}
        loss = np.empty((), _output_dtype(executable, self.loss))
        buffers = {names.new(name): np.empty_like(value) for name, value in self.buffers.items()}
        outputs = {self.loss: loss, **buffers, **{k: v for b in bindings for k, v in b.outputs.items()}}
        all_feeds = {**feeds, **self._buffer_feeds(), **state_feeds}
        guard = self._guard()
        if guard is not None:
            found = np.empty((), np.bool_)
            outputs[names.FOUND_INF] = found
            if guard.loss_scale:
                all_feeds.update(self.grad_scaler.feeds())
                outputs.update(self.grad_scaler.outputs())
        _check_complete(executable, all_feeds, "step")
        new_slots.add()
        executable.run(all_feeds, outputs)
        skipped = guard is not None and bool(found)
        for b in bindings:
            b.finish()  # skipped: the outputs hold the old values, bit for bit
            if not skipped:
                b.commit()
        self._commit_buffers(buffers)
        self.optimizer._advance_schedules()  # noqa: SLF001 - the step the optimizer would have counted
        if guard is not None:
            self.optimizer.found_inf = skipped
            self.optimizer.skipped_steps += skipped
            if guard.loss_scale:
                self.grad_scaler.update_from(outputs)
        return float(loss)

    def _apply_accumulated(self) -> None:
        """The optimizer's step on the gradients `accumulate` summed, then a fresh sum."""
        if self._scaling():
            self.grad_scaler.step(self.optimizer)  # unscales the summed gradients, skips if not finite
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._accumulating = False

    def _scaling(self) -> bool:
        return self.grad_scaler is not None and self.grad_scaler.enabled

    def _guard(self) -> Guard | None:
        """The training step's non-finite guard (`graphopt.update.guard`), if it has one."""
        scaling = self._scaling()
        return Guard(loss_scale=scaling) if scaling or self.optimizer.skip_nonfinite else None

    @property
    def found_inf(self) -> bool:
        """Whether the last step was skipped for a non-finite gradient."""
        return self.optimizer.found_inf

    @property
    def skipped_steps(self) -> int:
        """How many steps were skipped for non-finite gradients."""
        return self.optimizer.skipped_steps

    @serialized
    def accumulate(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None = None) -> float:
        """Forward and backward on one batch, adding the gradients into each parameter's
        ``.grad`` (the facade's ``sum_grad`` semantics: a sum, not a mean); no update.
        The next `step` applies the sum. Returns the batch's loss."""
        return self._gradients_into_buffers(inputs, labels, "accumulate")

    def _gradients_into_buffers(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None,
                                method: str, started: Callable[[], None] | None = None,
                                after: Callable[[int], None] | None = None) -> float:
        """Forward and backward; the gradients written into (or, after an earlier batch, added to) the
        optimizer's flat gradient buffers. ``method`` names the caller in errors. ``started()`` is called once
        the feeds are checked, before anything runs; ``after(k)`` once stage ``k`` of an overlapped data-parallel
        step wrote its bucket of gradients (`graphopt.distributed.overlap`)."""
        gradients = self._gradient_executable()
        feeds = _checked(gradients, self._feeds(inputs, labels), method, self._batch_inputs)
        self._check_labels(feeds, method)
        all_feeds = {**feeds, **self._current_weights(), **self._buffer_feeds()}
        if self._scaling():
            all_feeds[SCALE] = self.grad_scaler.feeds()[SCALE]
        _check_complete(gradients, all_feeds, method)
        if started is not None:
            started()
        summing = self._accumulating
        loss = np.empty((), _output_dtype(gradients, self.loss))
        outputs = {self.loss: loss, **{names.new(name): np.empty_like(v) for name, v in self.buffers.items()}}
        for name, p in self.parameters.items():  # the first batch's gradients go straight into the flat buffers
            storage = p._grad_storage  # noqa: SLF001
            outputs[names.grad(name)] = np.empty_like(storage) if summing and p.grad is not None else storage
        if after is None:
            gradients.run(all_feeds, outputs)
        else:
            gradients.run(all_feeds, outputs, after)
        for name, p in self.parameters.items():
            if outputs[names.grad(name)] is p._grad_storage:  # noqa: SLF001
                p.grad = p._grad_storage  # noqa: SLF001 - already there: the setter copies nothing
            else:
                p.grad += outputs[names.grad(name)]
        self._commit_buffers(outputs)
        self._accumulating = True
        return float(loss)

    def _gradient_executable(self):
        """The forward-and-backward model compiled (for the current loss scaling): whole, or in stages by bucket
        when the data-parallel step overlaps its reduction (`overlap`)."""
        scaling = self._scaling()
        if self._gradients is None or self._gradients[0] != scaling:
            model = build_gradients(self._train_model, self.loss, list(self.parameters), list(self.buffers),
                                    loss_scale=scaling)
            runtime = self.optimizer._runtime  # noqa: SLF001
            if self.overlap:
                from graphopt.distributed.overlap import OverlappedGradients
                names_of = {id(p): name for name, p in self.parameters.items()}
                executable = OverlappedGradients(runtime, model, self.optimizer, names_of, self.bucket_bytes)
            else:
                executable = runtime.compile(model)
            self._gradients = (scaling, executable)
        return self._gradients[1]

    @property
    def fused_update(self) -> bool:
        """Whether `step` runs the gradients and then the optimizer's fused update kernels (two ONNX Runtime
        calls): where the kernels run (`fused_kernels`) with ``fused_step="two_calls"``, or a non-finite guard."""
        return self.fused_kernels and (self.fused_step == "two_calls" or self._guard() is not None)

    @property
    def fused_kernels(self) -> bool:
        """Whether `step` runs the optimizer's fused update kernels instead of a standard-operator update: when
        the optimizer's runtime fuses (``Runtime(fused=...)``, `graphopt.fused.runtime`); ``fused_step`` says how
        (inside the one training-step graph, or as a second call after the gradients: `fused_update`)."""
        if self._fused is None:
            self.optimizer._layouts()  # noqa: SLF001 - an optimizer without update graphs (LBFGS) refuses here
            self._fused = runs_fused(self.optimizer._runtime)  # noqa: SLF001
        return self._fused

    def _feeds(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> dict[str, np.ndarray]:
        if labels is None:
            return dict(inputs)
        if self.labels is None:
            raise ValueError("Trainer.step: labels given, but the loss is the model's own output; "
                             "feed them in inputs under the model's input name")
        return {**inputs, self.labels: labels}

    def _check_labels(self, feeds: Mapping[str, np.ndarray], method: str) -> None:
        """Refuse cross-entropy labels outside the classes before anything runs; a class count the
        static shapes leave open is read once from the model's output on this batch."""
        if self._loss_spec is None or self.labels not in feeds:
            return
        if self._classes is None and self._loss_spec.kind == "cross_entropy":
            output = self._loss_spec.output or self.model.graph.output[0].name
            batch = {k: v for k, v in feeds.items() if k != self.labels}
            self._classes = int(self.evaluate(batch)[output].shape[1])
        self._loss_spec.check_labels(feeds[self.labels], self._classes, f"Trainer.{method}")

    def _commit_buffers(self, new_values: Mapping[str, np.ndarray]) -> None:
        for name in self.buffers:
            self.buffers[name] = new_values[names.new(name)]

    def _training_step(self, fused: bool = False):
        """The layouts of this step and the training-step model compiled for their structure: ``(model,
        executable, in-place pairs)``; ``fused``: the executable runs the model with fused update kernels
        (`graphopt.fused.runtime.fused_training_step`, where they build), the model is the standard one."""
        layouts = self.optimizer._layouts()
        specs = tuple(GroupSpec(layout.group, layout.transform,
                                tuple(ParamSpec(name, p.shape, p.dtype) for flat, names_ in
                                      zip(layout.flats, layout.names_of) for p, name in zip(flat.params, names_)))
                      for layout in layouts)
        key = (specs, self._guard(), fused)
        if key not in self._compiled:
            model = build_training_step(self._train_model, self.loss, specs, list(self.buffers), key[1])
            runtime = self.optimizer._runtime  # noqa: SLF001
            run, kernel = (fused_training_step(runtime, model, specs) if fused else None) or (model, None)
            executable = runtime.compile(run, keep_optimized=True, kernel=kernel)
            self._compiled[key] = (model, executable, proven_in_place(run, executable, _candidates(specs)))
        return layouts, specs, self._compiled[key]

    # -- state -------------------------------------------------------------------------------

    @serialized
    def state_dict(self) -> dict[str, Any]:
        """Copies of the parameters and running statistics, the optimizer's ``state_dict()`` and, with a
        grad scaler, its ``state_dict()`` (key ``grad_scaler``)."""
        result = {"parameters": {name: p.data.copy() for name, p in self.parameters.items()},
                  "buffers": {name: value.copy() for name, value in self.buffers.items()},
                  "optimizer": (self._zero if self._zero is not None else self.optimizer).state_dict()}
        if self.grad_scaler is not None:
            result["grad_scaler"] = self.grad_scaler.state_dict()
        return result

    @serialized
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`; raises, changing nothing, if anything in it is wrong: names, shapes,
        non-finite values, or the optimizer's state (see `Optimizer.load_state_dict`). Everything is
        checked before anything changes."""
        expected = {"parameters", "buffers", "optimizer"} | ({"grad_scaler"} if self.grad_scaler else set())
        if not isinstance(state_dict, Mapping) or set(state_dict) != expected:
            got = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"Trainer.load_state_dict: expected a dict with keys {sorted(expected)}, got {got}")
        scaler = self.grad_scaler.validated(state_dict["grad_scaler"]) if self.grad_scaler else None
        parameters = _loaded_arrays("parameters", state_dict["parameters"],
                                    {n: p.data for n, p in self.parameters.items()})
        buffers = _loaded_arrays("buffers", state_dict["buffers"], self.buffers)
        owner = self._zero if self._zero is not None else self.optimizer
        optimizer = owner._validated(state_dict["optimizer"])  # noqa: SLF001
        owner._apply_loaded(*optimizer)  # noqa: SLF001
        if scaler is not None:
            self.grad_scaler._apply(scaler)  # noqa: SLF001
        for name, value in parameters.items():
            self.parameters[name].data[...] = value
        self.buffers = buffers

    # -- inference and export --------------------------------------------------------------

    @serialized
    def evaluate(self, inputs: Mapping[str, np.ndarray], averaged: bool = False) -> dict[str, np.ndarray]:
        """The model's outputs for ``inputs``, with the current parameters (or, ``averaged``, the
        optimizer's weight average, see `Optimizer.averaged_weights`) and running statistics."""
        if self._evaluation is None:
            model = trainable_as_inputs(self.model, [*self.parameters, *self.buffers])
            self._evaluation = self.optimizer._runtime.compile(model)
        feeds = {**inputs, **self._current_weights(averaged)}
        names_ = list(self._evaluation.output_names)
        return dict(zip(names_, self._evaluation.session.run(names_, feeds)))

    def _buffer_feeds(self) -> dict[str, np.ndarray]:
        """The running statistics as a training run reads them: copies, since ONNX Runtime's BatchNormalization
        in training mode writes into the array it reads ``input_var`` from (onnxruntime 1.32, CPU), which would
        change the trainer's own array before the step commits, and whatever the caller holds of it."""
        return {name: value.copy() for name, value in self.buffers.items()}

    def _current_weights(self, averaged: bool = False) -> dict[str, np.ndarray]:
        if averaged:
            weights = self.optimizer.averaged_weights()
            return {**{name: weights[p] for name, p in self.parameters.items()}, **self.buffers}
        return {**{name: p.data for name, p in self.parameters.items()}, **self.buffers}

    @serialized
    def export(self, path: str | os.PathLike | None = None, kind: str = "step",
               averaged: bool = False) -> onnx.ModelProto:
        """``"step"``: the training-step model (see `graphopt.training.step` for its I/O);
        ``"inference"``: the model with the trained weights as its initializers (``averaged``: the
        optimizer's weight average instead);
        ``"training_info"``: that inference model plus a ``TrainingInfoProto`` whose algorithm
        is the training step, holding the optimizer state (`graphopt.training.info`;
        `graphopt.TrainingSession` loads it and continues training)."""
        if kind not in KINDS:
            raise ValueError(f"Trainer.export: kind must be one of {KINDS}, got {kind!r}")
        if averaged and kind != "inference":
            raise ValueError(f"Trainer.export: averaged=True is for kind='inference', got kind={kind!r}")
        if kind == "training_info" and self._zero is not None:
            raise NotImplementedError("Trainer.export: kind='training_info' holds the optimizer state, which "
                                      "shard_state=True spreads over the processes; save trainer.state_dict() "
                                      "(graphopt.checkpoint) instead")
        if kind != "inference":
            self.optimizer._warn_python_schedulers("export")  # noqa: SLF001
        if kind == "step":
            model = self._training_step()[2][0]
        else:
            model = self._inference_model(averaged)
            if kind == "training_info":
                model = with_training_info(model, self._training_step()[2][0], self._optimizer_state())
        if path is not None:
            onnx.save(model, os.fspath(path))
        return model

    def _inference_model(self, averaged: bool = False) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        weights = self._current_weights(averaged)
        for tensor in model.graph.initializer:
            if tensor.name in weights:
                tensor.CopyFrom(numpy_helper.from_array(np.asarray(weights[tensor.name]), tensor.name))
        return model

    def _optimizer_state(self) -> dict[str, np.ndarray]:
        """The step model's state inputs (slots, step counts, hyperparameters) by name, as host arrays."""
        layouts, specs, _ = self._training_step()
        state = {}
        # nothing runs: with every pair counted as in place no scratch arrays are made; only the feeds are read
        for b in _bindings(layouts, specs, _candidates(specs)):
            state.update({k: v.numpy() if isinstance(v, Region) else np.array(v) for k, v in b.feeds.items()
                          if k not in self.parameters})
        guard = self._guard()
        if guard is not None and guard.loss_scale:
            state.update(self.grad_scaler.feeds())
        return state


def _candidates(specs) -> set[tuple[str, str]]:
    """Every (input, output) pair of the step model that could share a buffer."""
    return {pair for spec in specs for pair in in_place_candidates(spec.params, spec.transform)}


def _bindings(layouts, specs, safe: set, new_slots: NewSlots | None = None) -> list[TensorBindings]:
    """Every tensor of every group bound to the step model's I/O, the (input, output) pairs in
    ``safe`` written in place; given ``new_slots``, nothing is written before each `prepare`."""
    return [TensorBindings(layout.group, [(f, i) for f in layout.flats for i in range(len(f.params))],
                           spec.params, spec.transform, layout.hypers, safe, new_slots=new_slots)
            for layout, spec in zip(layouts, specs)]


def _with_loss(model: onnx.ModelProto, loss: Loss | str) -> tuple[onnx.ModelProto, str]:
    """The model computing the loss, and the loss's name."""
    if isinstance(loss, Loss):
        return loss.attach(model)
    outputs = [o.name for o in model.graph.output]
    if loss not in outputs:
        raise ValueError(f"Trainer: loss {loss!r} is not an output of the model (outputs: {outputs}); "
                         f"pass a graphopt.losses loss to attach one")
    return model, loss


def _param_groups(trainable: list[str], groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` with their ``params`` selectors resolved to names, plus a last group of the rest."""
    remaining, result = list(trainable), []
    for g, group in enumerate(groups):
        if "params" not in group:
            raise ValueError(f"Trainer: groups[{g}] has no 'params' (a name, pattern or list of them)")
        chosen = matching(remaining, group["params"], f"groups[{g}]['params']")
        remaining = [n for n in remaining if n not in chosen]
        result.append({**group, "params": chosen})
    if remaining:
        result.append({"params": remaining})
    return result


def _loaded_arrays(kind: str, given: Any, current: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``given`` (a state dict's parameters or buffers) as arrays of the current dtypes, checked:
    the same names and shapes, finite values."""
    where = "Trainer.load_state_dict"
    if not isinstance(given, Mapping) or set(given) != set(current):
        names_ = sorted(map(str, given)) if isinstance(given, Mapping) else type(given).__name__
        raise ValueError(f"{where}: {kind} {names_} do not match the trainer's {sorted(current)}")
    result = {}
    for name, value in given.items():
        array = np.asarray(value)
        if array.shape != current[name].shape:
            raise ValueError(f"{where}: {kind[:-1]} {name!r} has shape {array.shape}, expected {current[name].shape}")
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{where}: {kind[:-1]} {name!r} must be a number array, got {array.dtype}")
        array = array.astype(current[name].dtype, copy=True)
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: {kind[:-1]} {name!r} holds non-finite values")
        result[name] = array
    return result


def _upstream(model: onnx.ModelProto, output: str) -> set[str]:
    """The names ``output`` depends on: node inputs, and the names a subgraph of such a node reads
    from the enclosing scope."""
    producers = {name: node for node in model.graph.node for name in node.output}
    result, pending = set(), [output]
    while pending:
        name = pending.pop()
        if name in result:
            continue
        result.add(name)
        node = producers.get(name)
        if node is not None:
            pending.extend(node.input)
            pending.extend(implicit_inputs(node))
    return result


def _nothing_to_train(label: str, loss: str, trainable: Selector, frozen: Selector, model: onnx.ModelProto,
                      default: list[str] | None, chosen: list[str]) -> str:
    """Why a trainer would have no parameter: what was selected, from what."""
    if trainable is not None:
        tried = f"trainable={trainable!r} (selected {chosen}, none of which the loss {loss!r} depends on)"
    else:
        tried = f"the default: the weights the loss {loss!r} depends on differentiably, {sorted(default or [])}"
    floats = float_initializers(model)
    return (f"Trainer: nothing to train in {label}: {tried}, frozen={frozen!r} leave no parameter "
            f"(float initializers: {floats[:20]}{' ...' if len(floats) > 20 else ''}); "
            f"does the loss depend on a weight? pass trainable=... to choose some")


def _check_complete(executable: Executable, feeds: Mapping[str, Any], method: str) -> None:
    missing = [name for name in executable.input_names if name not in feeds]
    if missing:
        raise ValueError(f"Trainer.{method}: missing inputs {missing}")


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _checked(executable: Executable, feeds: Mapping[str, Any], method: str,
             data_inputs: list[str]) -> dict[str, np.ndarray]:
    """The user's ``feeds`` as numpy arrays of the model's input types: integers are widened or
    narrowed to the integer type expected (labels), other mismatches and wrong ranks raise."""
    expected = executable.inputs
    result = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        info = expected.get(name) if name in data_inputs else None
        if info is None:
            raise ValueError(f"Trainer.{method}: {name!r} is not an input of the model (inputs: {data_inputs})")
        dtype = np.dtype(_NUMPY_TYPES.get(info.type, value.dtype))
        if value.dtype != dtype:
            if value.dtype.kind not in "iu" or dtype.kind != "i":
                raise TypeError(f"Trainer.{method}: input {name!r} is {value.dtype}, the model expects {dtype}")
            value = value.astype(dtype)
        if value.ndim != len(info.shape):
            raise ValueError(f"Trainer.{method}: input {name!r} has shape {value.shape}, the model expects "
                             f"{len(info.shape)} dimensions {info.shape}")
        result[name] = value
    return result


def _output_dtype(executable: Executable, name: str) -> np.dtype:
    return np.dtype(_NUMPY_TYPES[executable.outputs[name].type])
