"""Which initializers are trained: selections by name or pattern, and the default rule that trains
a model's weights but not its exporter's constants."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


Selector = str | Sequence[str] | None

PARAMETERS = "graphopt.parameters"  # metadata_props key: the JSON list of a model's parameters (from_torch)


def running_statistics(model: onnx.ModelProto) -> list[str]:
    """The initializers that BatchNormalization nodes read as running mean and variance."""
    return [name for n in model.graph.node if n.op_type == "BatchNormalization" for name in n.input[3:5]]


def float_initializers(model: onnx.ModelProto) -> list[str]:
    """The float initializers, running statistics excepted, in model order."""
    stats = set(running_statistics(model))
    return [t.name for t in model.graph.initializer
            if helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f" and t.name not in stats]


def matching(candidates: list[str], selector: str | Sequence[str], what: str) -> list[str]:
    patterns = [selector] if isinstance(selector, str) else list(selector)
    matched = set()
    for pattern in patterns:
        hits = fnmatch.filter(candidates, pattern)
        if not hits:
            raise ValueError(f"{what}: {pattern!r} matches none of the candidate float initializers "
                             f"{candidates[:30]}")
        matched.update(hits)
    return [name for name in candidates if name in matched]


def select_trainable(model: onnx.ModelProto, trainable: Selector = None, frozen: Selector = None,
                     default: Sequence[str] | None = None) -> list[str]:
    """The float initializers to train, in model order: those matching ``trainable`` (names or
    ``fnmatch`` patterns; else ``default``, else all, running statistics excepted) less those
    matching ``frozen``."""
    floats = float_initializers(model)
    if trainable is None:
        chosen = floats if default is None else [name for name in floats if name in set(default)]
    else:
        chosen = matching(floats, trainable, "trainable")
    dropped = set() if frozen is None else set(matching(floats, frozen, "frozen"))
    return [name for name in chosen if name not in dropped]


def recorded_parameters(model: onnx.ModelProto) -> list[str] | None:
    """The parameters recorded in ``model.metadata_props`` under `PARAMETERS` (as
    `graphopt.from_torch` does: the module's trainable parameters), or None."""
    entry = next((e.value for e in model.metadata_props if e.key == PARAMETERS), None)
    if entry is None:
        return None
    recorded = json.loads(entry)
    if not isinstance(recorded, list) or not all(isinstance(name, str) for name in recorded):
        raise ValueError(f"model metadata {PARAMETERS!r} must be a JSON list of initializer names, got {entry[:200]!r}")
    return recorded


def default_trainable(model: onnx.ModelProto, differentiable: Sequence[str]) -> list[str]:
    """What a trainer trains when not told: of ``differentiable`` (the float initializers the
    loss depends on differentiably), the parameters the model records (`recorded_parameters`)
    if it records them, else all but `exporter_constants`."""
    recorded = recorded_parameters(model)
    if recorded is not None:
        kept = set(recorded)
        return [name for name in differentiable if name in kept]
    excluded = set(exporter_constants(model, differentiable))
    return [name for name in differentiable if name not in excluded]


def exporter_constants(model: onnx.ModelProto, among: Sequence[str] | None = None) -> list[str]:
    """The float initializers that look like constants an exporter folded, not weights:

    * scalars: tensors of rank 0 (``x * 0.25``, an epsilon, a scale), and tensors of one element
      that only Mul and Div nodes read (an attention's ``1/sqrt(d)``);
    * masks: tensors holding a non-finite value or one at the float type's extremes (an
      attention mask filled with ``-inf`` or the type's lowest value);
    * GroupNorm's helpers: the all-ones scale and all-zeros bias of an InstanceNormalization
      that normalizes a Reshape's output (torch's exporters build GroupNorm that way and apply
      the module's weight and bias after it).

    A learnable scalar (a 0-d temperature) is therefore not trained unless named. ``among``
    limits the search to those initializers (default: all)."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    found = set(_group_norm_helpers(model))
    wanted = None if among is None else set(among)
    for tensor in model.graph.initializer:
        floating = helper.tensor_dtype_to_np_dtype(tensor.data_type).kind == "f"
        if not floating or (wanted is not None and tensor.name not in wanted):
            continue
        value = numpy_helper.to_array(tensor)
        scalar = value.ndim == 0 or (value.size == 1 and readers.get(tensor.name, {""}) <= {"Mul", "Div"})
        masked = value.size and not np.all(np.abs(value) < np.finfo(value.dtype).max / 2)
        if scalar or masked:
            found.add(tensor.name)
    return [t.name for t in model.graph.initializer if t.name in found and (wanted is None or t.name in wanted)]


def _group_norm_helpers(model: onnx.ModelProto) -> list[str]:
    values = {t.name: t for t in model.graph.initializer}
    reshaped = {out for node in model.graph.node if node.op_type == "Reshape" for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "InstanceNormalization" or node.input[0] not in reshaped:
            continue
        scale, bias = (values.get(name) for name in node.input[1:3])
        if (scale is not None and bias is not None and np.all(numpy_helper.to_array(scale) == 1)
                and np.all(numpy_helper.to_array(bias) == 0)):
            found += [scale.name, bias.name]
    return found
