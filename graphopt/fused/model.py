"""`fuse`: a chunked update (and reduction) as one custom-op node over flat buffers, with its fragment.

The fused model has the chunked model's input and output names. Its Scan is replaced by one node of
domain ``ai.graphopt.fused`` whose op type is the fragment's ``GRAPHOPT_OP_NAME``; it takes the Scan's
scan inputs as 1-D buffers of ``n`` elements (the model's inputs themselves, so the executor binds the
flat buffers directly and no Reshape copies an output) and every outer value the body reads as a 0-d
scalar; the outer graph's scalar arithmetic stays as standard ops. Decision: the element-wise inputs
and outputs are 1-D ``[n]`` (the chunked model's were ``[rows, 1, K]`` views of the same buffers).
In the reduction, the Scan and the ``ReduceSum`` of its row partials become one node whose 0-d double
output keeps the ``ReduceSum``'s name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from graphopt.fused.body import translate_body
from graphopt.native.kernel import DOMAIN
from graphopt.fused.errors import NotFusable
from graphopt.fused.fragment import render
from graphopt.update.chunked import ChunkedModels
from graphopt.update.inplace import implicit_inputs

FLAT = "n"  # the symbolic element count of the flat buffers


@dataclass(frozen=True)
class FusedModel:
    """An update or reduction model with its one custom op, and the fragment that implements it."""

    model: onnx.ModelProto
    fragment: str
    op_type: str
    elementwise_inputs: tuple[str, ...]  # the model inputs bound as flat buffers (the Scan's scan inputs)
    scalar_inputs: tuple[str, ...]  # the custom op's scalar operands (outer values of the model)


@dataclass(frozen=True)
class FusedModels:
    update: FusedModel
    reduce: FusedModel | None


def fuse(models: ChunkedModels) -> FusedModels:
    """The fused forms of ``models`` (`graphopt.update.chunked.build_chunked`); `NotFusable` when a node
    of a Scan body has no translation, or the model is not shaped as a chunked update."""
    update = fuse_model(models.update, reduction=False)
    reduce = None if models.reduce is None else fuse_model(models.reduce, reduction=True)
    return FusedModels(update, reduce)


def fuse_model(model: onnx.ModelProto, *, reduction: bool) -> FusedModel:
    """One chunked model (update, or ``reduction``) as a `FusedModel`."""
    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    scans = [n for n in graph.node if n.op_type == "Scan"]
    if len(scans) != 1:
        raise NotFusable(f"expected one Scan node in the chunked model, found {len(scans)}")
    scan = scans[0]
    _check_scan(scan)
    types, shapes = _outer_values(graph)
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    body_graph = next(a.g for a in scan.attribute if a.name == "body")
    body = translate_body(body_graph, types, shapes, initializers, reduction=reduction)
    fragment, op_type = render(body, reduction=reduction)
    nodes, scalar_names = _scalar_operands(graph, body, types)
    flat_inputs = list(scan.input)
    _check_flat(graph, scan, reduction)
    if reduction:
        consumers = [n for n in graph.node if scan.output[0] in n.input]
        if len(consumers) != 1 or consumers[0].op_type != "ReduceSum" or len(consumers[0].input) != 1:
            raise NotFusable("the reduction's Scan output must feed one ReduceSum over all rows")
        replaced, outputs = [scan, consumers[0]], [consumers[0].output[0]]
    else:
        replaced, outputs = [scan], list(scan.output)
    fused = helper.make_node(op_type, flat_inputs + scalar_names, outputs, name=op_type, domain=DOMAIN)
    indices = {i for i, n in enumerate(graph.node) if any(n is r for r in replaced)}  # same order as model's
    kept = [n for i, n in enumerate(model.graph.node) if i not in indices]
    new_model = _assemble(model, kept + nodes + [fused], set(flat_inputs), set() if reduction else set(outputs))
    return FusedModel(new_model, fragment, op_type, tuple(flat_inputs), tuple(scalar_names))


def _check_scan(scan: onnx.NodeProto) -> None:
    attributes = {a.name: a for a in scan.attribute}
    if attributes["num_scan_inputs"].i != len(scan.input):
        raise NotFusable(f"Scan {scan.name!r} carries state between iterations; fused kernels take "
                         "stateless Scans only")
    for name in ("scan_input_axes", "scan_output_axes", "scan_input_directions", "scan_output_directions"):
        if name in attributes and any(attributes[name].ints):
            raise NotFusable(f"Scan {scan.name!r} sets {name}; fused kernels take rows along axis 0 only")


def _check_flat(graph: onnx.GraphProto, scan: onnx.NodeProto, reduction: bool) -> None:
    """The Scan's row inputs must be model inputs, and (in an update) its outputs model outputs read by no
    node: they become the flat buffers."""
    model_inputs = {v.name for v in graph.input}
    for name in scan.input:
        if name not in model_inputs:
            raise NotFusable(f"Scan input {name!r} is computed in the model; fused kernels take model inputs")
    if reduction:
        return
    model_outputs = {v.name for v in graph.output}
    read = {i for n in graph.node for i in n.input}
    for name in scan.output:
        if name not in model_outputs or name in read:
            raise NotFusable(f"Scan output {name!r} is not only a model output; fused kernels write model outputs")


def _outer_values(graph: onnx.GraphProto) -> tuple[dict[str, int], dict[str, tuple | None]]:
    """Element type and static shape (None if unknown) of every typed value of the outer graph."""
    types, shapes = {}, {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        types[value.name] = tensor.elem_type
        dims = tensor.shape.dim if tensor.HasField("shape") else None
        known = dims is not None and all(d.HasField("dim_value") for d in dims)
        shapes[value.name] = tuple(d.dim_value for d in dims) if known else None
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
        shapes[tensor.name] = tuple(tensor.dims)
    return types, shapes


def _scalar_operands(graph: onnx.GraphProto, body, types) -> tuple[list[onnx.NodeProto], list[str]]:
    """The custom op's scalar operands: each outer value the body reads, as a 0-d value. A ``[1, 1]``
    value made by reshaping a 0-d one is replaced by that one; another is reshaped to 0-d."""
    producers = {o: n for n in graph.node for o in n.output}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info, *graph.output]}
    nodes, names = [], []
    for name, _ in body.scalars:
        producer = producers.get(name)
        if rank.get(name) == 0:
            names.append(name)
        elif producer is not None and producer.op_type == "Reshape" and rank.get(producer.input[0]) == 0:
            names.append(producer.input[0])
        else:
            shape = f"{name}.fused_shape"
            nodes.append(helper.make_node("Constant", [], [shape], name=shape,
                                          value=numpy_helper.from_array(_empty_shape(), shape)))
            nodes.append(helper.make_node("Reshape", [name, shape], [f"{name}.fused_scalar"],
                                          name=f"{name}.fused_scalar"))
            names.append(f"{name}.fused_scalar")
    return nodes, names


def _empty_shape() -> np.ndarray:
    return np.zeros((0,), np.int64)


def _assemble(model: onnx.ModelProto, nodes: list[onnx.NodeProto], flat_inputs: set[str],
              flat_outputs: set[str]) -> onnx.ModelProto:
    """``model`` with ``nodes`` (live ones only, in an order valid for ONNX), flat ``[n]`` buffers."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    live = live_nodes(nodes, outputs)
    used = {i for n in live for i in n.input}
    inputs = [_flat(v) if v.name in flat_inputs else v for v in graph.input]
    new_outputs = [_flat(v) if v.name in flat_outputs else v for v in graph.output]
    initializers = [t for t in graph.initializer if t.name in used]
    new_graph = helper.make_graph(_topological(live, {v.name for v in graph.input} | {t.name for t in initializers}),
                                  graph.name, inputs, new_outputs, initializers)
    opsets = [o for o in model.opset_import if o.domain not in ("", DOMAIN)]
    opsets += [helper.make_opsetid("", next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))),
               helper.make_opsetid(DOMAIN, 1)]
    fused = helper.make_model(new_graph, opset_imports=opsets, ir_version=model.ir_version,
                              producer_name=model.producer_name, doc_string=f"{model.doc_string} (fused)")
    onnx.checker.check_model(fused)
    return fused


def _flat(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, [FLAT])


def live_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The ``nodes`` that ``outputs`` depend on (through subgraphs' outer reads too), in their order."""
    producers = {o: n for n in nodes for o in n.output if o}
    live, stack = {}, list(outputs)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in live:
            live[id(node)] = node
            stack.extend(i for i in node.input if i)
            stack.extend(implicit_inputs(node))
    return [n for n in nodes if id(n) in live]


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready, ordered, pending = set(available), [], list(nodes)
    while pending:
        progress = [n for n in pending if all(not i or i in ready for i in n.input)]
        if not progress:
            raise NotFusable("the fused model's nodes have a cycle or read an unknown value")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if all(id(n) != id(p) for p in progress)]
    return ordered
