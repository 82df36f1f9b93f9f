"""`from_torch`: a torch module as an ONNX model that `graphopt.Trainer` trains as torch would.

>>> import torch, numpy as np, graphopt
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> model = graphopt.from_torch(net, torch.randn(4, 3), input_names=["x"], output_names=["y"])
>>> [t.name for t in model.graph.initializer]
['0.weight', '0.bias', '2.weight', '2.bias']
>>> trainer = graphopt.Trainer(model, graphopt.losses.mse("y"), graphopt.optim.SGD(lr=0.1))
>>> loss = trainer.step({"x": np.ones((4, 3), np.float32)}, labels=np.zeros((4, 2), np.float32))

The module is exported by TorchScript (``torch.onnx.export(dynamo=False)``) in training mode
without constant folding: the exporter then neither folds a parameter into a new constant
(a transposed weight named ``onnx::MatMul_12``) nor merges parameters of equal values (two
fresh LayerNorms' weights); tied parameters (one ``Parameter`` used twice) stay one
initializer. The result is checked (every parameter the outputs depend on is an initializer of
its own name, and onnxruntime computes the module's outputs), put in inference mode (as
``module.eval()``; the Trainer runs BatchNormalization and Dropout in training mode during
steps) and records its parameters in ``metadata_props`` (`preparation.PARAMETERS`), which the
Trainer trains by default. The module, its running statistics and torch's random state are
left as they were.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from graphopt.preparation import PARAMETERS, infer_shapes, to_inference_mode

OPSET = 17  # what torch's TorchScript exporter writes well and graphopt converts to its own opset


def from_torch(module: Any, example_inputs: Any, *, input_names: Sequence[str] | None = None,
               output_names: Sequence[str] | None = None, dynamic_batch: bool = True,
               dynamic_axes: Mapping[str, Any] | None = None, opset_version: int = OPSET, check: bool = True,
               rtol: float = 1e-4, atol: float = 1e-5) -> onnx.ModelProto:
    """``module`` exported for training: an ``onnx.ModelProto`` for `graphopt.Trainer`.

    Args:
        module: a ``torch.nn.Module``.
        example_inputs: a tensor or a tuple of tensors, the positional arguments of ``forward``.
        input_names, output_names: the model's input and output names (default ``input_0, ...``
            and ``output_0, ...``, outputs flattened in order).
        dynamic_batch: make dimension 0 of every input and output (of rank >= 1) dynamic;
            ``dynamic_axes`` (torch.onnx.export's argument) replaces it when given.
        opset_version: the ONNX opset the exporter writes.
        check: run the exported model with onnxruntime and compare its outputs with the module's
            in ``eval()`` mode (on a copy) within ``rtol`` / ``atol``; a mismatch raises.

    Raises ``ValueError`` naming the parameters the exporter dropped, merged or renamed while the
    outputs depend on them (a parameter that ``forward`` does not use only warns: it is not in
    the model and not trained), and naming the outputs that differ from the module's.
    """
    import torch

    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"from_torch: example_inputs[{i}] is a {type(arg).__name__}; pass a tensor or a "
                            f"tuple of tensors, forward's positional arguments")
    reference = copy.deepcopy(module).eval()
    expected, reached = _reference(torch, reference, args)
    input_names = list(input_names) if input_names is not None else [f"input_{i}" for i in range(len(args))]
    output_names = list(output_names) if output_names is not None else [f"output_{i}" for i in range(len(expected))]
    if len(output_names) != len(expected):
        raise ValueError(f"from_torch: {len(output_names)} output_names given, the module returns "
                         f"{len(expected)} tensors")
    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = _batch_axes({**{n: a.dim() for n, a in zip(input_names, args)},
                                    **{n: e.ndim for n, e in zip(output_names, expected)}})
    model = _export(torch, module, args, input_names, output_names, dynamic_axes, opset_version)
    parameters = _aliases(module)
    model = _tied(model, parameters)
    _put_buffers(model, reference)
    recorded = _checked_parameters(model, parameters, reached)
    model = to_inference_mode(model)
    model.metadata_props.add(key=PARAMETERS, value=json.dumps(recorded))
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(input_names, args)}
    model = _ranked(model, feeds)
    if check:
        _check_outputs(model, feeds, dict(zip(output_names, expected)), rtol, atol)
    return model


def _reference(torch, module, args) -> tuple[list[np.ndarray], set[str]]:
    """The module's flattened outputs on ``args``, and the parameters they depend on (by autograd)."""
    with torch.enable_grad():
        outputs = _flat(module(*args))
    params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    differentiable = [o for o in outputs if o.requires_grad]
    reached = set()
    if differentiable and params:
        total = sum(o.float().sum() for o in differentiable)
        grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
        reached = {name for (name, _), g in zip(params, grads) if g is not None}
    return [o.detach().cpu().numpy() for o in outputs], reached


def _batch_axes(ranks: Mapping[str, int]) -> dict[str, dict[int, str]]:
    """torch.onnx.export's ``dynamic_axes``: dimension 0 of every input and output of rank >= 1."""
    return {name: {0: "batch"} for name, rank in ranks.items() if rank >= 1}


def _flat(value) -> list:
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    if hasattr(value, "detach"):
        return [value]
    raise TypeError(f"from_torch: the module returns a {type(value).__name__}; expected tensors "
                    f"(or tuples / lists of them)")


def _export(torch, module, args, input_names, output_names, dynamic_axes, opset_version) -> onnx.ModelProto:
    """The TorchScript export in training mode, leaving the module's modes, buffers and torch's
    random state as they were (tracing runs ``forward`` in training mode)."""
    import io

    modes = {m: m.training for m in module.modules()}
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    stream = io.BytesIO()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's tracer and deprecation warnings
            torch.onnx.export(module.train(), args, stream, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                              do_constant_folding=False, opset_version=opset_version, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes)
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in modes.items():
            m.training = training
    return onnx.load_from_string(stream.getvalue())


def _aliases(module) -> dict[str, list[str]]:
    """Each trainable parameter's name (the first, as ``named_parameters()`` gives it) and all its
    names, tied ones (one ``Parameter`` reached under several names) included."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            names.setdefault(id(p), []).append(name)
    return {aliases[0]: aliases for aliases in names.values()}


def _tied(model: onnx.ModelProto, parameters: Mapping[str, list[str]]) -> onnx.ModelProto:
    """``model`` with each parameter's initializer under its first name, and one initializer for
    a parameter the exporter wrote under several of its names."""
    present = {t.name for t in model.graph.initializer}
    renames = {}
    for name, aliases in parameters.items():
        found = [a for a in aliases if a in present]
        if found and found != [name]:
            renames.update({a: name for a in found if a != name})
    if not renames:
        return model
    kept, seen = [], set()
    for tensor in model.graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
        if tensor.name not in seen:
            seen.add(tensor.name)
            kept.append(tensor)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    _rename_inputs(model.graph, renames)
    return model


def _rename_inputs(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_inputs(sub, renames)


def _put_buffers(model: onnx.ModelProto, module) -> None:
    """The module's buffers (running statistics), as they were before the export traced
    ``forward`` in training mode, into the initializers of their names."""
    values = {name: b for name, b in module.named_buffers()}
    for tensor in model.graph.initializer:
        if tensor.name in values and values[tensor.name].is_floating_point():
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name].detach().cpu().numpy(), tensor.name))


def _checked_parameters(model: onnx.ModelProto, parameters: Mapping[str, list[str]], reached: set[str]) -> list[str]:
    """The trainable parameters that are initializers of the model, in the module's order,
    after checking that none the outputs depend on is missing."""
    initializers = {t.name: t for t in model.graph.initializer}
    missing = [name for name in parameters if name not in initializers]
    lost = [name for name in missing if name in reached]
    if lost:
        raise ValueError(f"from_torch: the exported model has no initializer for the parameters {lost}, although "
                         f"the outputs depend on them: the exporter merged, renamed or folded them "
                         f"(initializers: {sorted(initializers)[:40]})")
    if missing:
        warnings.warn(f"from_torch: the parameters {missing} do not affect the outputs on the example inputs "
                      f"and are not in the exported model: they are not trained", stacklevel=3)
    return [name for name in parameters if name in initializers]


def _ranked(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the rank (dimensions unknown) and type of every value that shape inference
    cannot rank, as onnxruntime computes it on ``feeds``: a traced graph's ranks do not change,
    but TorchScript reshapes attention heads by sizes sliced from run-time shapes, and the
    gradient rules need the rank."""
    inferred = infer_shapes(model, data_prop=True).graph
    ranked = {v.name for v in [*inferred.value_info, *inferred.input, *inferred.output]
              if v.type.tensor_type.HasField("shape")}
    unranked = [out for node in model.graph.node for out in node.output if out and out not in ranked]
    if not unranked:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in unranked)  # types as computed
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(unranked, {k: v for k, v in feeds.items() if k in wanted})
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.graph.value_info.extend(
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), [None] * value.ndim)
        for name, value in zip(unranked, values) if isinstance(value, np.ndarray))
    return result


def _check_outputs(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                  rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Raise ``ValueError`` naming the outputs that onnxruntime computes for ``feeds`` unlike ``expected``."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    actual = dict(zip(expected, session.run(list(expected), {k: v for k, v in feeds.items() if k in wanted})))
    wrong = {name: _difference(actual[name], value) for name, value in expected.items()
             if np.shape(actual[name]) != np.shape(value) or not np.allclose(actual[name], value, rtol, atol)}
    if wrong:
        raise ValueError(f"from_torch: onnxruntime's outputs differ from the module's (in eval mode) for {wrong}: "
                         f"the exporter did not capture the module faithfully")


def _difference(actual: np.ndarray, expected: np.ndarray) -> str:
    if np.shape(actual) != np.shape(expected):
        return f"shape {np.shape(actual)} != {np.shape(expected)}"
    return f"max abs difference {np.max(np.abs(actual.astype(np.float64) - expected)):.3g}"
