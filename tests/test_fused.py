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
from onnx import TensorProto, helper

import graphopt
from graphopt import names, optim
from graphopt.fused import DOMAIN, TRANSLATIONS, NotFusable, fuse
from graphopt.symbolic import clip, minimum, sign
from graphopt.transforms import ScaleByLearningRate, Transform, chain
from graphopt.update.chunked import GRADS, PARAMS, SUM_OF_SQUARES, ChunkedSpec, NotChunkable, build_chunked
from tests.fused_cases import NOT_CHUNKABLE, cases
from tests.fused_harness import FLAGS, NATIVE_FLAGS, compiled, gcc_vectorizes, needs_compiler

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
    outputs, seen = [], {i.name for i in graph.input}  # operands that are model inputs are fed as they are
    for k, name in enumerate(fused.scalar_inputs):
        if name not in seen:
            seen.add(name)
            elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(kernel.input_types[kernel.elementwise + k]))
            outputs.append(helper.make_tensor_value_info(name, elem_type, []))
    flat = set(n for node in graph.node if node.domain == DOMAIN for n in node.output)
    outputs += [o for o in graph.output if o.name not in flat and o.name not in seen]
    if not outputs:  # nothing for ORT to compute
        return None
    new = helper.make_graph(nodes, "scalars", list(graph.input), outputs, list(graph.initializer))
    return helper.make_model(new, opset_imports=[o for o in fused.model.opset_import if o.domain != DOMAIN],
                             ir_version=fused.model.ir_version)


def _run_fused(fused, flat: dict[str, np.ndarray], scalars: dict[str, np.ndarray], *, aliased=False,
               flags=FLAGS):
    """The fused model's outputs: its scalar ops by ORT, its kernel by the fragment compiled with ``flags``."""
    results = {}
    model = _scalars_model(fused)
    if model is not None:
        session = _session(model)
        feeds = {i.name: (flat[i.name] if i.name in flat else scalars[i.name]) for i in session.get_inputs()}
        results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    kernel = compiled(fused.fragment, flags)
    operands = [np.ascontiguousarray(results[name] if name in results else scalars[name])
                for name in fused.scalar_inputs]
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


def _steps(transform, hypers, models, dtype, special, aliased=False, flags=FLAGS):
    """Both paths stepped STEPS times from the same state; every output compared each step."""
    fused = fuse(models)
    rng = np.random.default_rng(7)
    flat = _buffers(rng, transform, dtype, special)
    scalar_state = dict(transform.scalar_slots())
    slots = transform.all_slots()
    for step in range(STEPS):
        scalars = _scalars(models.update, hypers, transform, step, scalar_state)
        if models.reduce is not None:
            total = _run_standard(models.reduce, flat, scalars)[SUM_OF_SQUARES]
            ours = _run_fused(fused.reduce, flat, scalars, flags=flags)[SUM_OF_SQUARES]
            _assert_close_sums(ours, total, dtype, f"step {step} sum of squares")
            scalars[names.hyper(GROUP, SUM_OF_SQUARES)] = np.array(total)  # the same total into both updates
        theirs = _run_standard(models.update, flat, scalars)
        ours = _run_fused(fused.update, flat, scalars, aliased=aliased, flags=flags)
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
    _steps(*_models(case, dtype), dtype, special)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_outputs_written_over_their_inputs(case):
    """The executor binds ``params.new`` to ``params`` (and each slot likewise): same results."""
    _steps(*_models(case, np.float32), np.float32, special=True, aliased=True)


NATIVE_CASES = [c for c in CASES if c[1] in ("Adam", "RMSprop", "SGD", "NAdam") and "clip_norm" in c[2]]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
def test_native_flags_without_fp_contract_off(case, dtype):
    """Compiled with -O3 -march=native and GCC's default contraction, the fragment still does not fuse
    ``a * b + c`` into an FMA (its GRAPHOPT_STRICT_FP), so results stay identical."""
    _steps(*_models(case, dtype), dtype, special=False, flags=NATIVE_FLAGS)


def test_body_op_types_are_the_documented_ones():
    """The op types in the Scan bodies of every case are BODY_OPS / REDUCE_BODY_OPS, each translated."""
    found, reduce_found = set(), set()
    for case in CASES:
        for dtype in DTYPES:
            _, _, models = _models(case, dtype)
            found |= _body_ops(models.update)
            if models.reduce is not None:
                reduce_found |= _body_ops(models.reduce)
    assert found == BODY_OPS
    assert reduce_found == REDUCE_BODY_OPS
    assert BODY_OPS | REDUCE_BODY_OPS - {"ReduceSumSquare"} <= set(TRANSLATIONS)


def _body_ops(model: onnx.ModelProto) -> set[str]:
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    return {n.op_type for n in scan.attribute[0].g.node}


@pytest.mark.parametrize("kind", sorted(NOT_CHUNKABLE))
def test_optimizers_without_a_chunked_form_have_nothing_to_fuse(kind):
    transform, _ = _transform_and_hypers(kind, NOT_CHUNKABLE[kind], None, None)
    with pytest.raises(NotChunkable):
        build_chunked(ChunkedSpec(GROUP, transform, np.dtype(np.float32), K))


@dataclass(frozen=True)
class ClippedSignMomentum(Transform):
    """A user's transform: ``m <- beta m + (1 - beta) clip(g, -limit, limit)`` (slot ``trace``);
    ``u <- sign(m) * min(|m|, limit)``."""

    def all_slots(self):
        return ("trace",)

    def apply(self, updates, ctx):
        beta, limit = ctx.hyper("beta"), ctx.hyper("limit")
        result = []
        for i, g in enumerate(updates):
            m = ctx.accumulate(i, "trace", beta, (1.0 - beta) * clip(g, -limit, limit))
            result.append(sign(m) * minimum(abs(m), limit))
        return result


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("special", [False, True], ids=["finite", "nonfinite"])
def test_a_users_transform_is_fused(special, dtype):
    transform = chain(ClippedSignMomentum(), ScaleByLearningRate())
    hypers = {"beta": 0.9, "limit": 0.5, "lr": 0.1, "lr_mult": 1.0}
    models = build_chunked(ChunkedSpec(GROUP, transform, np.dtype(dtype), K))
    assert {"Clip", "Sign", "Min", "Abs"} <= _body_ops(models.update)
    _steps(transform, hypers, models, dtype, special)


@dataclass(frozen=True)
class ExpOfGradient(Transform):
    """``u <- exp(g)``: ONNX Runtime's Exp is vectorized its own way, so it has no translation."""

    def apply(self, updates, ctx):
        return [g.graph.unary("Exp", g) for g in updates]


def test_an_op_without_translation_raises_not_fusable_naming_it():
    transform = chain(ExpOfGradient(), ScaleByLearningRate())
    models = build_chunked(ChunkedSpec(GROUP, transform, np.dtype(np.float32), K))
    with pytest.raises(NotFusable, match=r"node_Exp_\d+ \(Exp.*no fused-kernel translation"):
        fuse(models)


def test_float16_is_not_fusable():
    transform = chain(ScaleByLearningRate())
    models = build_chunked(ChunkedSpec(GROUP, transform, np.dtype(np.float16), K))
    with pytest.raises(NotFusable, match="FLOAT16"):
        fuse(models)


def test_fused_model_keeps_the_chunked_names_and_holds_one_custom_op():
    case = next(c for c in CASES if c[1] == "Adam" and "clip_norm" in c[2])
    _, _, models = _models(case, np.float32)
    fused = fuse(models)
    for chunked, ours in ((models.update, fused.update), (models.reduce, fused.reduce)):
        assert [i.name for i in ours.model.graph.input] == [i.name for i in chunked.graph.input]
        assert [o.name for o in ours.model.graph.output] == [o.name for o in chunked.graph.output]
        custom = [n for n in ours.model.graph.node if n.domain == DOMAIN]
        assert len(custom) == 1 and custom[0].op_type == ours.op_type
        assert not any(n.op_type == "Scan" for n in ours.model.graph.node)
        assert f'#define GRAPHOPT_OP_NAME "{ours.op_type}"' in ours.fragment
        assert list(ours.elementwise_inputs) == [PARAMS, GRADS, "exp_avg", "exp_avg_sq"]
        for value in ours.model.graph.input:
            if value.name in ours.elementwise_inputs:
                assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["n"]
    kernel = compiled(fused.update.fragment)
    node = next(n for n in fused.update.model.graph.node if n.domain == DOMAIN)
    assert (kernel.num_inputs, kernel.num_outputs, kernel.elementwise) == (len(node.input), 3, 4)
    assert list(node.input) == [*fused.update.elementwise_inputs, *fused.update.scalar_inputs]
    assert compiled(fused.reduce.fragment).output_types == [np.float64]
    assert fuse(_models(case, np.float64)[2]).update.op_type != fused.update.op_type  # the hash sees the dtype


def test_kernel_writes_only_its_range_and_reduction_ranges_add_up():
    case = next(c for c in CASES if c[1] == "SGD" and "clip_norm" in c[2] and c[2].get("momentum"))
    transform, hypers, models = _models(case, np.float32)
    fused = fuse(models)
    flat = _buffers(np.random.default_rng(3), transform, np.float32, special=False)
    flat[GRADS][:2] = [1e10, -1e10]  # huge, but finite when squared in float32
    scalars = _scalars(models.update, hypers, transform, 2, {})
    whole = _run_fused(fused.reduce, flat, scalars)[SUM_OF_SQUARES]
    kernel = compiled(fused.reduce.fragment)
    inputs = [flat[name] for name in fused.reduce.elementwise_inputs]
    operands = [np.array(np.float32(2.0))]  # the reduction's one scalar: the gradient scale
    assert len(fused.reduce.scalar_inputs) == 1
    parts = kernel.reduce(inputs + operands, 0, 2 * K) + kernel.reduce(inputs + operands, 2 * K, ROWS * K)
    assert parts == pytest.approx(float(whole), rel=1e-6)
    g = flat[GRADS].astype(np.float64) * 2.0
    assert float(whole) == pytest.approx(float(np.sum(g ** 2)), rel=1e-5)  # the formula, in float64
    scalars[names.hyper(GROUP, SUM_OF_SQUARES)] = np.array(float(whole))
    full = _run_fused(fused.update, flat, scalars)
    update = compiled(fused.update.fragment)
    session = _session(_scalars_model(fused.update))
    feeds = {i.name: flat.get(i.name, scalars.get(i.name)) for i in session.get_inputs()}
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    operands = [results.get(name, scalars.get(name)) for name in fused.update.scalar_inputs]
    elementwise = [flat[name] for name in fused.update.elementwise_inputs]
    outputs = [np.full(ROWS * K, 7.0, np.float32) for _ in range(update.num_outputs)]
    update.run(elementwise + [np.ascontiguousarray(o) for o in operands], outputs, begin=K, end=3 * K)
    node = next(n for n in fused.update.model.graph.node if n.domain == DOMAIN)
    for name, out in zip(node.output, outputs):
        assert np.all(out[:K] == 7.0) and np.all(out[3 * K:] == 7.0)
        np.testing.assert_array_equal(out[K:3 * K], full[name][K:3 * K])


# Ops the optimizers' bodies do not emit (or not with these attributes), each checked against ORT
# in a hand-made Scan over rows: x, y rows; s a 0-d scalar (also as the [1, 1] s11); c a bool scalar.
def _n(op, inputs, output, **attributes):
    return helper.make_node(op, inputs, [output], **attributes)


HAND_BODIES = {
    "gemm_alpha_beta": [_n("Gemm", ["s11", "x.row", "y.row"], "out.row", alpha=0.3, beta=0.9)],
    "gemm_alpha_bcast_c": [_n("Gemm", ["s11", "x.row", "s11"], "out.row", alpha=-1.7)],
    "gemm_beta0_ignores_c": [_n("Gemm", ["s11", "x.row", "y.row"], "out.row", beta=0.0)],
    "gemm_two_operands": [_n("Gemm", ["s11", "x.row"], "out.row")],
    "gemm_two_operands_alpha": [_n("Gemm", ["s11", "x.row"], "out.row", alpha=-1.5)],
    "gemm_beta": [_n("Gemm", ["s11", "x.row", "y.row"], "out.row", beta=-0.5)],
    "gemm_transA": [_n("Gemm", ["s11", "x.row", "y.row"], "out.row", transA=1)],
    "gemm_transB": [_n("Gemm", ["s11", "x.row", "y.row"], "out.row", transB=1)],
    "pow_scalar_exponent": [_n("Pow", ["x.row", "s"], "out.row")],
    "pow_tensors": [_n("Abs", ["x.row"], "a"), _n("Pow", ["a", "y.row"], "out.row")],
    "pow_scalar_base": [_n("Abs", ["s"], "a"), _n("Pow", ["a", "y.row"], "out.row")],
    "max3_min": [_n("Max", ["x.row", "y.row", "s"], "m"), _n("Min", ["m", "x.row"], "n"),
                 _n("Min", ["n", "s11"], "out.row")],
    "max_one_operand": [_n("Max", ["x.row"], "out.row")],
    "clip_low_only": [_n("Clip", ["x.row", "s"], "out.row")],
    "clip_high_only": [_n("Clip", ["x.row", "", "s"], "out.row")],
    "clip_both": [_n("Neg", ["s"], "lo"), _n("Clip", ["x.row", "lo", "s"], "out.row")],
    "clip_none": [_n("Clip", ["x.row"], "out.row")],
    "cast_bool_round_trip": [_n("Cast", ["x.row"], "b", to=TensorProto.BOOL), _n("Cast", ["b"], "f", to="T"),
                             _n("Add", ["f", "y.row"], "out.row")],
    "cast_other_float": [_n("Cast", ["x.row"], "o", to="OTHER"), _n("Mul", ["o", "o"], "q"),
                         _n("Cast", ["q"], "out.row", to="T")],
    "isinf_positive_only": [_n("IsInf", ["x.row"], "b", detect_negative=0), _n("Where", ["b", "y.row", "x.row"],
                                                                                "out.row")],
    "isinf_negative_only": [_n("IsInf", ["x.row"], "b", detect_positive=0), _n("Where", ["b", "y.row", "x.row"],
                                                                                "out.row")],
    "isnan_logic": [_n("IsNaN", ["x.row"], "a"), _n("Not", ["a"], "na"), _n("LessOrEqual", ["x.row", "y.row"], "le"),
                    _n("GreaterOrEqual", ["y.row", "s11"], "ge"), _n("And", ["na", "le"], "p"),
                    _n("Or", ["p", "ge"], "q"), _n("Xor", ["q", "c"], "r"), _n("Where", ["r", "x.row", "y.row"],
                                                                                 "out.row")],
    "where_outer_condition": [_n("Where", ["c", "x.row", "s"], "out.row")],
    "where_outer_condition_scalar_a": [_n("Where", ["c", "s", "x.row"], "out.row")],
    "where_outer_condition_tensors": [_n("Where", ["c", "x.row", "y.row"], "out.row")],
    **{f"where_tensor_condition_{a}_{b}": [_n("Less", ["x.row", "y.row"], "l"), _n("Where", ["l", a, b], "out.row")]
       for a, b in (("x.row", "s"), ("s11", "y.row"), ("s", "s11"), ("x.row", "y.row"))},
    "unary": [_n("Neg", ["x.row"], "a"), _n("Reciprocal", ["a"], "b"), _n("Floor", ["y.row"], "f"),
              _n("Ceil", ["x.row"], "g"), _n("Identity", ["g"], "h"), _n("Sub", ["f", "h"], "d"),
              _n("Add", ["b", "d"], "out.row")],
    "equal_sign": [_n("Equal", ["x.row", "y.row"], "e"), _n("Sign", ["x.row"], "sg"),
                   _n("Where", ["e", "s11", "sg"], "out.row")],
}
SCALARS = [2.0, 3.0, 0.5, -1.5, 0.0, -0.0, np.nan, np.inf]


def _hand_model(body_nodes, dtype, transposed: bool) -> onnx.ModelProto:
    code = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    other = TensorProto.DOUBLE if code == TensorProto.FLOAT else TensorProto.FLOAT
    nodes = []
    for node in body_nodes:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.type == onnx.AttributeProto.STRING:
                value = {b"T": code, b"OTHER": other}[attribute.s]
                attribute.Clear()
                attribute.CopyFrom(helper.make_attribute("to", value))
        nodes.append(node)
    x_row = [K, 1] if transposed else [1, K]
    body = helper.make_graph(nodes, "row", [helper.make_tensor_value_info("x.row", code, x_row),
                                            helper.make_tensor_value_info("y.row", code, [1, K])],
                             [helper.make_tensor_value_info("out.row", code, [1, K])])
    outer = [helper.make_node("Constant", [], ["shape11"], value=helper.make_tensor("shape11", TensorProto.INT64,
                                                                                    [2], [1, 1])),
             helper.make_node("Reshape", ["s", "shape11"], ["s11"]),
             helper.make_node("Scan", ["x", "y"], ["out"], body=body, num_scan_inputs=2)]
    graph = helper.make_graph(outer, "hand", [helper.make_tensor_value_info("x", code, [None, *x_row]),
                                              helper.make_tensor_value_info("y", code, [None, 1, K]),
                                              helper.make_tensor_value_info("s", code, []),
                                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", code, [None, 1, K])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _hand_data(dtype):
    rng = np.random.default_rng(11)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.0, -2.0, 0.5, 1e30, -1e-30, 2.5, -2.5]
    x = np.concatenate([specials * K, rng.standard_normal(ROWS * K) * 3])[:ROWS * K].astype(dtype)
    y = np.roll(x, 5) * dtype(0.7)
    y[::7] = x[::7]  # some equal pairs
    return x, y


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(HAND_BODIES))
def test_hand_made_bodies_equal_ort(name, dtype):
    transposed = name == "gemm_transB"
    model = _hand_model(HAND_BODIES[name], dtype, transposed)
    from graphopt.fused import fuse_model
    fused = fuse_model(model, reduction=False)
    x, y = _hand_data(dtype)
    session = _session(model)
    for s in SCALARS:
        for c in (False, True):
            scalars = {"s": np.array(s, dtype), "c": np.array(c)}
            (theirs,) = session.run(None, {"x": x.reshape(ROWS, *([K, 1] if transposed else [1, K])),
                                           "y": y.reshape(ROWS, 1, K), **scalars})
            ours = _run_fused(fused, {"x": x, "y": y}, scalars)["out"]
            _assert_identical(ours, theirs.reshape(-1), f"{name} with s={s}, c={c}")


VECTOR_CASES = [c for c in CASES if "clip_value" in c[2] or c[3] is not None or c[4] is not None]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", VECTOR_CASES, ids=[c[0] for c in VECTOR_CASES])
def test_gcc_vectorizes_the_element_loop(case, dtype):
    """The point of the fused kernel is one fast pass: at -O3 -march=native, GCC must vectorize it
    (selects written one after another, builtins for math, ``ivdep``)."""
    vectorized = gcc_vectorizes(fuse(_models(case, dtype)[2]).update.fragment)
    if vectorized is None:
        pytest.skip("the compiler is not GCC; its vectorization report is not read")
    assert vectorized


def test_a_scan_output_read_by_another_node_is_not_fusable():
    model = _hand_model(HAND_BODIES["unary"], np.float32, False)
    graph = model.graph
    graph.node.append(helper.make_node("Neg", ["out"], ["negated"]))
    graph.output.append(helper.make_tensor_value_info("negated", TensorProto.FLOAT, [None, 1, K]))
    from graphopt.fused import fuse_model
    with pytest.raises(NotFusable, match="Scan output 'out' is not only a model output"):
        fuse_model(model, reduction=False)


def test_an_outer_value_of_shape_1x1_is_reshaped_to_a_scalar_operand():
    """A body reading a ``[1, 1]`` model input: the fused model reshapes it to 0-d for the custom op."""
    code = TensorProto.FLOAT
    body = helper.make_graph([_n("Mul", ["t11", "x.row"], "out.row")], "row",
                             [helper.make_tensor_value_info("x.row", code, [1, K])],
                             [helper.make_tensor_value_info("out.row", code, [1, K])])
    graph = helper.make_graph([helper.make_node("Scan", ["x"], ["out"], body=body, num_scan_inputs=1)], "outer",
                              [helper.make_tensor_value_info("x", code, [None, 1, K]),
                               helper.make_tensor_value_info("t11", code, [1, 1])],
                              [helper.make_tensor_value_info("out", code, [None, 1, K])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    from graphopt.fused import fuse_model
    fused = fuse_model(model, reduction=False)
    assert fused.scalar_inputs == ("t11.fused_scalar",)
    x = _hand_data(np.float32)[0]
    t11 = np.array([[-1.25]], np.float32)
    (theirs,) = _session(model).run(None, {"x": x.reshape(ROWS, 1, K), "t11": t11})
    ours = _run_fused(fused, {"x": x}, {"t11": t11})["out"]
    _assert_identical(ours, theirs.reshape(-1), "t11 * x")
