"""Loading a model, from a file or a ``ModelProto``, with every tensor's data in memory.

    model = loaded("models/net.onnx", "Trainer")                   # external data from models/
    model = loaded(proto, "Trainer", base_dir="models/")           # a proto read without its external data

A tensor whose ``data_location`` is ``EXTERNAL`` (in the graph and its subgraphs, in node
attributes and local functions, and in every ``TrainingInfoProto``'s initialization and
algorithm graphs, which ``onnx.load`` leaves external) is read relative to the model
file's folder, or to ``base_dir`` for a ``ModelProto``: never to the working directory.
ONNX's own rules apply (`onnx.external_data_helper`): a location is a relative path
that stays inside that folder and is no symbolic link, and its offset and length lie
within the file. A ``ModelProto`` holding external data and given no ``base_dir`` is
refused with an error naming its tensors; a file's folder cannot be overridden.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import onnx
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from graphopt.preparation.copying import copied


def loaded(model: onnx.ModelProto | str | os.PathLike, owner: str,
           base_dir: str | os.PathLike | None = None) -> onnx.ModelProto:
    """``model`` with its external data read in (a copy when a given proto had some; ``owner``
    names the caller in errors)."""
    if isinstance(model, onnx.ModelProto):
        external = [t.name for t in external_tensors(model)]
        if not external:
            return model
        if base_dir is None:
            raise ValueError(f"{owner}: the model's tensors {external[:10]}{' ...' if len(external) > 10 else ''} "
                             "keep their data in external files that were not loaded; pass base_dir= (the folder "
                             "of the model file), or the model's path; the working directory is never used")
        model, base, source = copied(model), os.path.abspath(os.fspath(base_dir)), "the model"
    else:
        if base_dir is not None:
            raise ValueError(f"{owner}: base_dir is for a ModelProto; a model file's external data is read "
                             f"from the file's own folder ({os.fspath(model)!r})")
        source = os.fspath(model)
        model = onnx.load(source, load_external_data=False)
        base = os.path.dirname(os.path.abspath(source))
    for tensor in external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        try:
            load_external_data_for_tensor(tensor, base)
        except (onnx.checker.ValidationError, OSError, ValueError) as error:
            raise ValueError(f"{owner}: external data of tensor {tensor.name!r} in {source!r} (location "
                             f"{location!r}, relative to {base!r}) cannot be read: {error}") from error
    return model


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` whose data lies in external files."""
    return [t for t in _tensors(model) if uses_external_data(t)]


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for tensor in [*sparse, *attribute.sparse_tensors]:
            yield from (tensor.values, tensor.indices)
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)
