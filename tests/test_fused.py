"""Fused update kernels (`graphopt.fused`) against ONNX Runtime running the standard chunked models.

Every optimizer and option of `tests.fused_cases`, float32 and float64: the chunked update run by
onnxruntime (the reference: ONNX semantics as ORT's CPU kernels compute them) and the fused form --
the fused model's standard scalar ops run by onnxruntime, its fragment compiled by g++ and called
on the same flat buffers -- must agree bit for bit (NaN equal to NaN) over several steps, on finite
data with huge, tiny and zero values and on data with NaN and infinities. Reductions agree to the
rounding of a different summation order. Skipped only where no C++ compiler exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import graphopt
from graphopt import names, optim
from graphopt.fused import DOMAIN, TRANSLATIONS, NotFusable, fuse
from graphopt.symbolic import clip, minimum, sign
from graphopt.transforms import ScaleByLearningRate, Transform, chain
from graphopt.update.chunked import GRADS, PARAMS, SUM_OF_SQUARES, ChunkedSpec, NotChunkable, build_chunked
from tests.fused_cases import NOT_CHUNKABLE, cases
from tests.fused_harness import compiled, needs_compiler

pytestmark = needs_compiler

GROUP = "group0"
ROWS, K = 6, 16
STEPS = 3
CASES = cases()
DTYPES = [np.float32, np.float64]

# The op types the chunked bodies of every case emit (float32 and float64); a new one must be
# translated (graphopt.fused.ops) and added here.
BODY_OPS = {"Abs", "Add", "Clip", "Div", "Equal", "Gemm", "Greater", "IsInf", "Less", "Max", "Mul", "Sign",
            "Sqrt", "Sub", "Where"}
REDUCE_BODY_OPS = {"Cast", "Clip", "Mul", "ReduceSumSquare"}


def _transform_and_hypers(kind, settings, averaging, schedule):
    opt = getattr(optim, kind)([graphopt.Parameter(np.zeros(4, np.float32))], **settings,
                               **({"averaging": averaging()} if averaging else {}))
    if schedule is not None:
        opt.schedule_lr(schedule(), clock=5)
    group = opt.param_groups[0]
    return opt._chain(group, 0), opt._hyperparameters(group)  # noqa: SLF001 - the group's update, as stepped


def _models(case, dtype):
    _, kind, settings, averaging, schedule = case
    transform, hypers = _transform_and_hypers(kind, settings, averaging, schedule)
    return transform, hypers, build_chunked(ChunkedSpec(GROUP, transform, np.dtype(dtype), K))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _buffers(rng, transform, dtype, special: bool) -> dict[str, np.ndarray]:
    """Flat buffers: params, grads, each slot. Gradients hold huge, tiny and signed-zero values, and
    NaN and infinities when ``special``."""
    n = ROWS * K
    big = 3e38 if dtype == np.float32 else 1e300
    grads = rng.standard_normal(n).astype(dtype)
    grads[:8] = [big, -big, 0.0, -0.0, 1e-45 if dtype == np.float32 else 5e-324, 1e-30, 7.0, -1e-3]
    if special:
        grads[8:12] = [np.nan, np.inf, -np.inf, np.nan]
        grads[40] = np.inf
    buffers = {PARAMS: rng.standard_normal(n).astype(dtype), GRADS: grads}
    for slot in transform.all_slots():
        values = rng.standard_normal(n).astype(dtype)
        buffers[slot] = np.abs(values) if slot != "prev" else values
    buffers[PARAMS][20:22] = [0.0, -0.0]
    return buffers


def _scalars(model, hypers, transform, step, scalar_state) -> dict[str, np.ndarray]:
    values = {}
    for value in model.graph.input:
        name = value.name
        if value.type.tensor_type.shape.dim:
            continue
        if name == names.step(GROUP):
            values[name] = np.array(float(step))
        elif name.startswith(GROUP + ".") and name[len(GROUP) + 1:] in hypers:
            values[name] = np.array(hypers[name[len(GROUP) + 1:]])
        elif name.startswith(GROUP + ".") and name[len(GROUP) + 1:] in scalar_state:
            values[name] = np.array(scalar_state[name[len(GROUP) + 1:]])
        elif name != names.hyper(GROUP, SUM_OF_SQUARES):
            raise AssertionError(f"test does not know scalar input {name!r}")
    return values


def _scalars_model(fused) -> onnx.ModelProto:
    """The fused model without its custom op: outputs its scalar operands and scalar outputs (ORT runs it).

    The operands are outputs under their own names (an Identity renaming them trips an ORT 1.32 graph
    optimizer bug when the operand is a no-op Cast: "Node input ... is not a graph input")."""
    graph = fused.model.graph
    nodes = [n for n in graph.node if n.domain != DOMAIN]
    kernel = compiled(fused.fragment)
    outputs, seen = [], set()
    for k, name in enumerate(fused.scalar_inputs):
        if name not in seen:
            seen.add(name)
            elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(kernel.input_types[kernel.elementwise + k]))
            outputs.append(helper.make_tensor_value_info(name, elem_type, []))
    flat = set(n for node in graph.node if node.domain == DOMAIN for n in node.output)
    outputs += [o for o in graph.output if o.name not in flat and o.name not in seen]
    new = helper.make_graph(nodes, "scalars", list(graph.input), outputs, list(graph.initializer))
    return helper.make_model(new, opset_imports=[o for o in fused.model.opset_import if o.domain != DOMAIN],
                             ir_version=fused.model.ir_version)


def _run_fused(fused, flat: dict[str, np.ndarray], scalars: dict[str, np.ndarray], *, aliased=False):
    """The fused model's outputs: its scalar ops by ORT, its kernel by the compiled fragment."""
    session = _session(_scalars_model(fused))
    feeds = {i.name: (flat[i.name] if i.name in flat else scalars[i.name]) for i in session.get_inputs()}
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    kernel = compiled(fused.fragment)
    operands = [np.ascontiguousarray(results[name] if name in results else scalars[name]) for name in fused.scalar_inputs]
    elementwise = [flat[name].copy() if aliased else flat[name] for name in fused.elementwise_inputs]
    node = next(n for n in fused.model.graph.node if n.domain == DOMAIN)
    if kernel.reduction:
        results[node.output[0]] = np.array(kernel.reduce(elementwise + operands))
        return results
    outs = None
    if aliased:  # every output written over the input it replaces (params.new over params, ...)
        outs = [elementwise[fused.elementwise_inputs.index(name[:-len(names.NEW)])] for name in node.output]
    for name, value in zip(node.output, kernel.run(elementwise + operands, outs)):
        results[name] = value
    return results


def _run_standard(model, flat, scalars):
    session = _session(model)
    feeds = {i.name: (flat[i.name].reshape(ROWS, 1, K) if i.name in flat else scalars[i.name])
             for i in session.get_inputs()}
    return {o.name: v.reshape(-1) if v.ndim == 3 else v
            for o, v in zip(session.get_outputs(), session.run(None, feeds))}


def _assert_identical(ours, theirs, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (what, ours.dtype, theirs.dtype)
    nan = np.isnan(theirs)
    np.testing.assert_array_equal(np.isnan(ours), nan, err_msg=f"{what}: NaNs differ")
    bits = {4: np.uint32, 8: np.uint64}[ours.itemsize]
    differ = np.flatnonzero(ours[~nan].view(bits) != theirs[~nan].view(bits))
    assert differ.size == 0, f"{what}: {differ.size} elements differ, first {ours[~nan][differ[:4]]} " \
                             f"vs {theirs[~nan][differ[:4]]}"


def _steps(case, dtype, special, aliased=False):
    """Both paths stepped STEPS times from the same state; every output compared each step."""
    transform, hypers, models = _models(case, dtype)
    fused = fuse(models)
    rng = np.random.default_rng(7)
    flat = _buffers(rng, transform, dtype, special)
    scalar_state = dict(transform.scalar_slots())
    slots = transform.all_slots()
    for step in range(STEPS):
        scalars = _scalars(models.update, hypers, transform, step, scalar_state)
        if models.reduce is not None:
            total = _run_standard(models.reduce, flat, scalars)[SUM_OF_SQUARES]
            ours = _run_fused(fused.reduce, flat, scalars)[SUM_OF_SQUARES]
            _assert_close_sums(ours, total, dtype, f"step {step} sum of squares")
            scalars[names.hyper(GROUP, SUM_OF_SQUARES)] = np.array(total)  # the same total into both updates
        theirs = _run_standard(models.update, flat, scalars)
        ours = _run_fused(fused.update, flat, scalars, aliased=aliased)
        assert set(ours) >= set(theirs)
        for name, value in theirs.items():
            _assert_identical(ours[name], value, f"step {step} output {name}")
        flat = {GRADS: rng.standard_normal(ROWS * K).astype(dtype) if not special else flat[GRADS],
                **{name: theirs[names.new(name)] for name in (PARAMS, *slots)}}
        scalar_state = {s: float(theirs[names.new(names.state(GROUP, s))]) for s in transform.scalar_slots()}


def _assert_close_sums(ours, theirs, dtype, what):
    """Sums of squares agree to the rounding of a different order (ORT's Eigen sums lanes in parallel)."""
    ours, theirs = float(ours), float(theirs)
    if np.isnan(theirs) or np.isinf(theirs):
        assert ours == theirs or (np.isnan(ours) and np.isnan(theirs)), (what, ours, theirs)
    else:
        rtol = K * np.finfo(dtype).eps * 2
        assert abs(ours - theirs) <= rtol * abs(theirs), (what, ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("special", [False, True], ids=["finite", "nonfinite"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_standard_chunked(case, special, dtype):
    _steps(case, dtype, special)
