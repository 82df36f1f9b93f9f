"""Fused update kernels inside the training step (issue 12 item 4): one library holding several ops, and the
`Trainer`'s step graph with the fused custom nodes in place of the standard-operator update (one ONNX Runtime
call per step, ``fused_step="graph"``).

References: hand-written kernels against numpy; the in-graph fused step against the same trainer's standard
one-graph step (``Runtime(fused=False)``, itself checked against torch in tests/test_trainer.py) and against the
two-call fused step (the same kernels run by the optimizer: equal bit for bit).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, native, optim
from graphopt.native import availability, build
from graphopt.native.kernel import DOMAIN
from graphopt.runtime import Runtime
from graphopt.symbolic import IR_VERSION, OPSET
from graphopt.training import trainer as trainer_module
from tools.bench_training import mlp_model as bench_mlp_model

needs_kernels = pytest.mark.skipif(not native.available(), reason="no C++ compiler: fused kernels cannot be built")

SCALE = """\
#include <cmath>
#define GRAPHOPT_OP_NAME "Fused_test_scale"
static const int graphopt_num_inputs = 2;
static const int graphopt_num_outputs = 1;
static const int graphopt_input_types[] = {1, 1};
static const int graphopt_output_types[] = {1};
static const int graphopt_elementwise_inputs = 1;
// out0 = sqrt(|in0|) * s
static void graphopt_kernel(int64_t begin, int64_t end, const void* const* in, void* const* out) {
  const float* x = static_cast<const float*>(in[0]);
  const float s = *static_cast<const float*>(in[1]);
  float* y = static_cast<float*>(out[0]);
  GRAPHOPT_VECTORIZE
  for (int64_t i = begin; i < end; ++i) y[i] = std::sqrt(std::fabs(x[i])) * s;
}
"""

SQUARES = """\
#define GRAPHOPT_OP_NAME "Fused_test_squares"
#define GRAPHOPT_REDUCTION 1
static const int graphopt_num_inputs = 1;
static const int graphopt_num_outputs = 1;
static const int graphopt_input_types[] = {11};
static const int graphopt_output_types[] = {11};
static const int graphopt_elementwise_inputs = 1;
static double graphopt_reduce(int64_t begin, int64_t end, const void* const* in) {
  const double* x = static_cast<const double*>(in[0]);
  double sum = 0.0;
  for (int64_t i = begin; i < end; ++i) sum += x[i] * x[i];
  return sum;
}
"""

BEGIN = """\
#define GRAPHOPT_OP_NAME "Fused_test_begin"
static const int graphopt_num_inputs = 1;
static const int graphopt_num_outputs = 1;
static const int graphopt_input_types[] = {7};
static const int graphopt_output_types[] = {7};
static const int graphopt_elementwise_inputs = 1;
// out0 = in0 + the first index of the range the call was given
static void graphopt_kernel(int64_t begin, int64_t end, const void* const* in, void* const* out) {
  const int64_t* x = static_cast<const int64_t*>(in[0]);
  int64_t* y = static_cast<int64_t*>(out[0]);
  for (int64_t i = begin; i < end; ++i) y[i] = x[i] + begin;
}
"""


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path_factory):
    """A private kernel cache, fused kernels enabled, the default compiler, fallback warnings not yet given."""
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))
    monkeypatch.delenv("GRAPHOPT_FUSED", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(availability, "_warned", set())


def _two_op_session(kernel):
    """``y = sqrt(|x|) * s`` (float32, x of any shape) and ``total = sum(z * z)`` (float64) in one model."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("z", TensorProto.DOUBLE, [None])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("total", TensorProto.DOUBLE, None)]
    nodes = [helper.make_node("Fused_test_scale", ["x", "s"], ["y"], domain=DOMAIN),
             helper.make_node("Fused_test_squares", ["z"], ["total"], domain=DOMAIN)]
    model = helper.make_model(helper.make_graph(nodes, "two_ops", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = IR_VERSION
    return ort.InferenceSession(model.SerializeToString(), kernel.session_options(), providers=["CPUExecutionProvider"])


# -- one library, several ops ------------------------------------------------------------------------------------

@needs_kernels
def test_one_library_holds_several_ops_and_one_session_runs_them():
    kernel = native.compile_kernels([SCALE, SQUARES])
    assert kernel.op_names == ("Fused_test_scale", "Fused_test_squares")
    with pytest.raises(ValueError, match="holds 2 ops"):
        _ = kernel.op_name
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((3, 50)).astype(np.float32), rng.standard_normal(77)
    s = np.array(1.5, np.float32)
    y, total = _two_op_session(kernel).run(None, {"x": x, "s": s, "z": z})
    assert y.shape == (3, 50)  # the output takes input 0's shape
    np.testing.assert_array_equal(y, np.sqrt(np.abs(x)) * s)
    assert total == pytest.approx(float(np.sum(z.astype(np.float64) ** 2)), rel=1e-14)


@needs_kernels
def test_the_same_fragments_in_any_order_are_one_cached_library():
    first = native.compile_kernels([SCALE, SQUARES])
    runs = build.compiler_runs
    again = native.compile_kernels([SQUARES, SCALE, SQUARES])
    assert build.compiler_runs == runs and again == first
    single = native.compile_kernel(SCALE)  # the one-op library is another library, of the same harness
    assert single.op_name == "Fused_test_scale" and single.library_path != first.library_path


def _one_node_session(kernel, op, elem_type, threads):
    x = helper.make_tensor_value_info("x", elem_type, [None])
    y = helper.make_tensor_value_info("y", elem_type, [None])
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=DOMAIN)], "one", [x], [y]),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = IR_VERSION
    options = kernel.session_options()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@needs_kernels
@pytest.mark.parametrize("threads", [1, 3])
def test_a_large_elementwise_op_runs_in_parts_of_65536_elements(threads):
    """Past 65536 elements the harness hands parts of 65536 to onnxruntime's intra-op threads; each part is one
    call of the kernel over its range (in the calling thread when the session has one thread)."""
    kernel = native.compile_kernels([BEGIN])
    n = 3 * 65536 + 1000
    (y,) = _one_node_session(kernel, "Fused_test_begin", TensorProto.INT64, threads).run(
        None, {"x": np.zeros(n, np.int64)})
    np.testing.assert_array_equal(y, np.arange(n) // 65536 * 65536)
    (small,) = _one_node_session(kernel, "Fused_test_begin", TensorProto.INT64, threads).run(
        None, {"x": np.zeros(65536, np.int64)})
    np.testing.assert_array_equal(small, 0)  # one call


@needs_kernels
def test_a_large_elementwise_op_bound_in_place_on_several_threads_equals_numpy():
    kernel = native.compile_kernels([SCALE, BEGIN])
    x = np.random.default_rng(4).standard_normal((5, 100_003)).astype(np.float32)
    expected = np.sqrt(np.abs(x)) * np.float32(0.25)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, [])]
    model = helper.make_model(
        helper.make_graph([helper.make_node("Fused_test_scale", ["x", "s"], ["y"], domain=DOMAIN)], "scale", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])]),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = IR_VERSION
    options = kernel.session_options()
    options.intra_op_num_threads = 3
    run = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    s = np.array(0.25, np.float32)
    binding = run.io_binding()
    binding.bind_input("x", "cpu", 0, np.float32, x.shape, x.ctypes.data)
    binding.bind_input("s", "cpu", 0, np.float32, (), s.ctypes.data)
    binding.bind_output("y", "cpu", 0, np.float32, x.shape, x.ctypes.data)
    run.run_with_iobinding(binding)
    np.testing.assert_array_equal(x, expected)


def test_two_different_fragments_of_one_op_name_are_refused():
    other = SCALE.replace("* s;", "+ s;")
    with pytest.raises(native.FusedBuildError, match="two different kernel fragments define the op name "
                                                     "'Fused_test_scale'"):
        build.translation_unit([SCALE, other])


def test_headers_are_included_once_outside_every_namespace():
    source = build.translation_unit([SCALE, SQUARES])
    first_namespace = source.index("namespace graphopt_op_0")
    assert "#include <cmath>" in source[:first_namespace]
    assert "#include <" not in source[first_namespace:source.index('#line 1 "harness.cpp"')]
    assert source.index("Fused_test_scale") < source.index("Fused_test_squares")  # sorted by op name


@needs_kernels
def test_a_compile_error_names_the_fragment_of_a_several_op_library():
    broken = SQUARES.replace("Fused_test_squares", "Fused_test_broken").replace("sum += x[i] * x[i];",
                                                                                "sum += x[i] * x[i]")
    with pytest.raises(native.FusedBuildError, match="rejected the fused kernel") as raised:
        native.compile_kernels([SCALE, broken])
    assert "fragment Fused_test_broken:11" in raised.value.compiler_output


# -- the Trainer's step graph with fused nodes ---------------------------------------------------------------------

def mlp_model(dims=(12, 16, 8, 5), seed=0):
    """``Gemm -> Relu`` layers (the last without Relu), float32: the benchmark's MLP, small."""
    return bench_mlp_model(list(dims), np.random.default_rng(seed))


def batchnorm_model(seed=1):
    """``Gemm -> BatchNormalization -> Relu -> Gemm``: running statistics updated by each step."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.uniform(-0.5, 0.5, (16, 12)).astype(np.float32), "fc0.w"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn.scale"),
             numpy_helper.from_array(np.zeros(16, np.float32), "bn.bias"),
             numpy_helper.from_array(np.zeros(16, np.float32), "bn.mean"),
             numpy_helper.from_array(np.ones(16, np.float32), "bn.var"),
             numpy_helper.from_array(rng.uniform(-0.5, 0.5, (5, 16)).astype(np.float32), "fc1.w"),
             numpy_helper.from_array(np.zeros(5, np.float32), "fc1.b")]
    nodes = [helper.make_node("Gemm", ["x", "fc0.w"], ["z"], transB=1),
             helper.make_node("BatchNormalization", ["z", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"]),
             helper.make_node("Relu", ["n"], ["h"]),
             helper.make_node("Gemm", ["h", "fc1.w", "fc1.b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


# (optimizer, its options, a second param group's options that change its chain: a second kernel, exact): exact
# says the fused step equals the standard one-graph step bit for bit. Adam's, AdamW's and Adagrad's (lr_decay)
# chunked graph (what is fused, and what the optimizer's own standard update runs) rounds its scalar factors
# differently from the per-tensor graph of the standard step: equal to float32 rounding there (as
# tests/test_fused_updates.py checks the fused update against the standard chunked one), and bit for bit against
# the two-call fused step.
CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01), dict(nesterov=True), True),
    ("AdamW", dict(lr=0.01, weight_decay=0.05), dict(amsgrad=True), False),
    ("RMSprop", dict(lr=0.01, momentum=0.5), dict(centered=True), True),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01), dict(maximize=True, lr_mult=0.5), False),
    ("Adam", dict(lr=0.01, clip_norm=0.5), dict(amsgrad=True), False),  # the group's sum of squares: reductions
]
IDS = [case[0] + ("-clip" if "clip_norm" in case[1] else "") for case in CASES]


def _batches(model_dims=(12, 5), steps=4, seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, model_dims[0])).astype(np.float32),
             rng.integers(0, model_dims[1], 8).astype(np.int64)) for _ in range(steps)]


def _train(model, kind, kwargs, group, fused, fused_step, batches, **trainer_kwargs):
    opt = getattr(optim, kind)(**kwargs, runtime=Runtime(fused=fused, threads=1))
    trainer = graphopt.Trainer(model, losses.cross_entropy("logits"), opt, groups=[{"params": "fc0.*", **group}],
                               fused_step=fused_step, **trainer_kwargs)
    lost = [trainer.step({"x": x}, labels=y) for x, y in batches]
    return trainer, lost


def _fused_ops(trainer):
    """The fused op types of the step graph the trainer's one-call fused step ran."""
    compiled = [value for key, value in trainer._compiled.items() if key[2]]  # noqa: SLF001
    assert len(compiled) == 1, "no in-graph fused step was compiled"
    return {n.op_type for n in compiled[0][1].optimized.graph.node if n.domain == DOMAIN}


def _assert_same(ours, theirs, exact):
    state = ours.state_dict(), theirs.state_dict()
    for name, value in theirs.parameters.items():
        got = ours.parameters[name].data
        if exact:
            np.testing.assert_array_equal(got, value.data, err_msg=name)
        else:
            np.testing.assert_allclose(got, value.data, rtol=1e-6, atol=1e-7, err_msg=name)
    for name, value in state[1]["buffers"].items():
        np.testing.assert_array_equal(state[0]["buffers"][name], value, err_msg=name)
    for index, slots in state[1]["optimizer"]["state"].items():
        for slot, value in slots.items():
            mine = state[0]["optimizer"]["state"][index][slot]
            if exact:
                np.testing.assert_array_equal(mine, value, err_msg=f"{index}.{slot}")
            else:
                np.testing.assert_allclose(mine, value, rtol=1e-6, atol=1e-7, err_msg=f"{index}.{slot}")


@needs_kernels
@pytest.mark.parametrize("kind, kwargs, group, exact", CASES, ids=IDS)
def test_fused_step_graph_equals_the_standard_step_and_the_two_call_step(kind, kwargs, group, exact):
    model, batches = mlp_model(), _batches()
    ours, our_losses = _train(model, kind, kwargs, group, None, "graph", batches)
    standard, standard_losses = _train(model, kind, kwargs, group, False, None, batches)
    two_calls, _ = _train(model, kind, kwargs, group, None, "two_calls", batches)
    assert ours._gradients is None, "the in-graph fused step ran a separate gradients call"  # noqa: SLF001
    assert ours.fused_kernels and not ours.fused_update and two_calls.fused_update
    assert ours.optimizer.sessions_built == 1  # the fused step graph, nothing else
    ops = _fused_ops(ours)
    assert len(ops) >= 2, f"two param groups of different chains should be two kernels in one library: {ops}"
    assert not any(key[2] for key in standard._compiled)  # noqa: SLF001 - not fused: the reference
    np.testing.assert_array_equal(our_losses[0], standard_losses[0])
    _assert_same(ours, standard, exact and "clip_norm" not in kwargs)
    _assert_same(ours, two_calls, "clip_norm" not in kwargs)  # the same kernels: bit for bit, but the sum order


@needs_kernels
def test_fused_step_graph_with_batchnorm_updates_the_running_statistics():
    model, batches = batchnorm_model(), _batches()
    kwargs, group = dict(lr=0.1, momentum=0.9), dict(nesterov=True)
    ours, _ = _train(model, "SGD", kwargs, group, None, "graph", batches)
    standard, _ = _train(model, "SGD", kwargs, group, False, None, batches)
    assert len(_fused_ops(ours)) == 2
    assert not np.array_equal(ours.buffers["bn.mean"], 0)  # the statistics moved
    _assert_same(ours, standard, True)


@needs_kernels
def test_fused_step_graph_writes_every_parameter_and_slot_in_place():
    """Even a weight the backward pass reads after its gradient is ready (``dX = dY W`` of fc1, fc2), which the
    standard step writes through a scratch buffer: the fused node is ordered after those readers."""
    model, batches = mlp_model(), _batches(steps=1)
    ours, _ = _train(model, "AdamW", dict(lr=0.01), {}, None, "graph", batches)
    standard, _ = _train(model, "AdamW", dict(lr=0.01), {}, False, None, batches)
    (fused_safe,) = [value[2] for key, value in ours._compiled.items() if key[2]]  # noqa: SLF001
    (standard_safe,) = [value[2] for value in standard._compiled.values()]  # noqa: SLF001
    _, specs, _ = ours._training_step(fused=True)  # noqa: SLF001
    assert fused_safe == trainer_module._candidates(specs)  # noqa: SLF001
    assert ("fc1.w", "fc1.w.new") in fused_safe - standard_safe
    twice, _ = _train(model, "AdamW", dict(lr=0.01), {}, None, "graph", _batches(steps=3))
    reference, _ = _train(model, "AdamW", dict(lr=0.01), {}, False, None, _batches(steps=3))
    _assert_same(twice, reference, False)


@needs_kernels
def test_fused_step_graph_exports_standard_onnx():
    model, batches = mlp_model(), _batches(steps=1)
    ours, _ = _train(model, "AdamW", dict(lr=0.01), {}, None, "graph", batches)
    exported = ours.export(kind="step")
    assert all(n.domain in ("", "ai.onnx") for n in exported.graph.node)
    assert all(o.domain in ("", "ai.onnx") for o in exported.opset_import)


@needs_kernels
def test_a_group_without_a_chunked_form_keeps_the_standard_update_in_the_same_graph():
    """Adadelta's clip_per_tensor has no chunked form: that group stays standard, the other is fused."""
    model, batches = mlp_model(), _batches()
    kwargs, group = dict(lr=1.0, rho=0.8), dict(clip_per_tensor=True, clip_norm=0.5)
    ours, _ = _train(model, "Adadelta", kwargs, group, None, "graph", batches)
    standard, _ = _train(model, "Adadelta", kwargs, group, False, None, batches)
    assert len(_fused_ops(ours)) == 1
    _assert_same(ours, standard, True)


@needs_kernels
def test_a_guarded_step_runs_two_calls():
    """skip_nonfinite: a kernel writing in place could not be undone when the check says skip."""
    model, batches = mlp_model(), _batches(steps=2)
    ours, _ = _train(model, "SGD", dict(lr=0.1), {}, None, "graph", batches, skip_nonfinite=True)
    assert not any(key[2] for key in ours._compiled) and ours._gradients is not None  # noqa: SLF001
    assert ours.fused_update


@needs_kernels
def test_a_library_that_does_not_build_leaves_the_standard_step_warned_once(monkeypatch):
    def broken(fragments):
        raise native.FusedBuildError("the compiler is broken today")

    monkeypatch.setattr(native, "compile_kernels", broken)
    model, batches = mlp_model(), _batches()
    with pytest.warns(RuntimeWarning, match="the compiler is broken today") as caught:
        ours, _ = _train(model, "SGD", dict(lr=0.1, momentum=0.9), {}, None, "graph", batches)
        _train(model, "SGD", dict(lr=0.1, momentum=0.9), {}, None, "graph", batches)
    assert len([w for w in caught if "broken" in str(w.message)]) == 1
    standard, _ = _train(model, "SGD", dict(lr=0.1, momentum=0.9), {}, False, None, batches)
    assert ours._gradients is None and _fused_ops(ours) == set()  # noqa: SLF001 - one standard graph
    _assert_same(ours, standard, True)


def test_no_compiler_runs_the_standard_step_warned_once(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    model, batches = mlp_model(), _batches(steps=2)
    with pytest.warns(RuntimeWarning, match="CXX='/nonexistent/c\\+\\+'") as caught:
        ours, _ = _train(model, "SGD", dict(lr=0.1), {}, None, "graph", batches)
        _train(model, "SGD", dict(lr=0.1), {}, None, "graph", batches)
    assert len([w for w in caught if "nonexistent" in str(w.message)]) == 1
    standard, _ = _train(model, "SGD", dict(lr=0.1), {}, False, None, batches)
    assert not ours.fused_kernels and not any(key[2] for key in ours._compiled)  # noqa: SLF001
    _assert_same(ours, standard, True)


def test_graphopt_fused_0_runs_the_standard_step_silently(monkeypatch):
    monkeypatch.setenv("GRAPHOPT_FUSED", "0")
    model, batches = mlp_model(), _batches(steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours, _ = _train(model, "SGD", dict(lr=0.1), {}, None, "graph", batches)
    assert not ours.fused_kernels and not any(key[2] for key in ours._compiled)  # noqa: SLF001


def test_fused_step_must_be_one_of_the_choices():
    with pytest.raises(ValueError, match="fused_step must be one of \\('graph', 'two_calls'\\)"):
        graphopt.Trainer(mlp_model(), losses.cross_entropy("logits"), optim.SGD(lr=0.1), fused_step="one_call")
    assert trainer_module.DEFAULT_FUSED_STEP in trainer_module.FUSED_STEPS


@needs_kernels
def test_a_group_that_does_not_fuse_keeps_its_standard_update_warned_once(monkeypatch):
    from graphopt.fused import runtime as fused_runtime

    real_fuse = fused_runtime.fuse

    def fuse_but_group1(models):
        if models.update.doc_string.endswith("of group1"):
            raise graphopt.fused.NotFusable("node 'x' (Foo) has no translation")
        return real_fuse(models)

    monkeypatch.setattr(fused_runtime, "fuse", fuse_but_group1)
    model, batches = mlp_model(), _batches()
    kwargs, group = dict(lr=0.1, momentum=0.9), dict(nesterov=True)
    with pytest.warns(RuntimeWarning, match="has no translation") as caught:
        ours, _ = _train(model, "SGD", kwargs, group, None, "graph", batches)
    assert len([w for w in caught if "no translation" in str(w.message)]) == 1
    standard, _ = _train(model, "SGD", kwargs, group, False, None, batches)
    assert len(_fused_ops(ours)) == 1  # group0's kernel only
    _assert_same(ours, standard, True)


@needs_kernels
def test_fused_step_graph_with_a_compiled_schedule_and_weight_averaging():
    """The schedule's clock output and the averaging slot: as the two-call fused step, bit for bit."""
    from graphopt.optim import schedules

    model, batches = mlp_model(), _batches(steps=5)
    results = []
    for fused_step in ("graph", "two_calls"):
        opt = optim.AdamW(lr=0.01, averaging=optim.EMA(decay=0.9), runtime=Runtime(threads=1))
        opt.schedule_lr(schedules.Sequential([schedules.Linear(0.1, 1.0, 2), schedules.Cosine(10)], milestones=[2]))
        trainer = graphopt.Trainer(model, losses.cross_entropy("logits"), opt, fused_step=fused_step)
        for x, y in batches:
            trainer.step({"x": x}, labels=y)
        results.append(trainer)
    assert _fused_ops(results[0])
    _assert_same(results[0], results[1], True)
    for name in results[0].parameters:
        np.testing.assert_array_equal(results[0].optimizer.averaged_weights()[results[0].parameters[name]],
                                      results[1].optimizer.averaged_weights()[results[1].parameters[name]])
