"""The native layer: kernel fragments (FUSED_CONTRACT.md) built into ONNX Runtime custom ops, and the cache.

The fragments here are written by hand; every result is compared with numpy computing the same formula.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphopt import native
from graphopt.native import availability, build, cache
from graphopt.symbolic import IR_VERSION, OPSET

HAVE_COMPILER = any(shutil.which(name) for name in ("c++", "g++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")

CODES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}
C_TYPES = {np.float32: "float", np.float64: "double"}

AXPY = """\
#define GRAPHOPT_OP_NAME "Fused_test_axpy"
static const int graphopt_num_inputs = 3;
static const int graphopt_num_outputs = 1;
static const int graphopt_input_types[] = {1, 1, 1};
static const int graphopt_output_types[] = {1};
static const int graphopt_elementwise_inputs = 2;
// out0 = in0 + s * in1
static void graphopt_kernel(int64_t begin, int64_t end, const void* const* in, void* const* out) {
  const float* x = static_cast<const float*>(in[0]);
  const float* y = static_cast<const float*>(in[1]);
  const float s = *static_cast<const float*>(in[2]);
  float* z = static_cast<float*>(out[0]);
  GRAPHOPT_VECTORIZE
  for (int64_t i = begin; i < end; ++i) z[i] = x[i] + s * y[i];
}
"""

MOMENTUM = """\
#define GRAPHOPT_OP_NAME "Fused_test_momentum_{T}"
static const int graphopt_num_inputs = 5;
static const int graphopt_num_outputs = 2;
static const int graphopt_input_types[] = {{{code}, {code}, {code}, {code}, {code}}};
static const int graphopt_output_types[] = {{{code}, {code}}};
static const int graphopt_elementwise_inputs = 3;
// inputs p, m, g, lr, beta; m' = beta * m + g; p' = p - lr * m'; outputs p', m' (bound onto p and m)
static void graphopt_kernel(int64_t begin, int64_t end, const void* const* in, void* const* out) {{
  const {T}* p = static_cast<const {T}*>(in[0]);
  const {T}* m = static_cast<const {T}*>(in[1]);
  const {T}* g = static_cast<const {T}*>(in[2]);
  const {T} lr = *static_cast<const {T}*>(in[3]);
  const {T} beta = *static_cast<const {T}*>(in[4]);
  {T}* p_out = static_cast<{T}*>(out[0]);
  {T}* m_out = static_cast<{T}*>(out[1]);
  GRAPHOPT_VECTORIZE
  for (int64_t i = begin; i < end; ++i) {{
    const {T} m_new = beta * m[i] + g[i];
    const {T} p_new = p[i] - lr * m_new;
    m_out[i] = m_new;
    p_out[i] = p_new;
  }}
}}
"""

SUM_OF_SQUARES = """\
#define GRAPHOPT_OP_NAME "Fused_test_sum_of_squares"
#define GRAPHOPT_REDUCTION 1
static const int graphopt_num_inputs = 1;
static const int graphopt_num_outputs = 1;
static const int graphopt_input_types[] = {1};
static const int graphopt_output_types[] = {11};
static const int graphopt_elementwise_inputs = 1;
static double graphopt_reduce(int64_t begin, int64_t end, const void* const* in) {
  const float* x = static_cast<const float*>(in[0]);
  double sum = 0.0;
  for (int64_t i = begin; i < end; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return sum;
}
"""


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(autouse=True)
def environment(monkeypatch, shared_cache):
    """Every test builds into a private cache, with fused kernels enabled and the default compiler."""
    monkeypatch.setenv("GRAPHOPT_CACHE", str(shared_cache))
    monkeypatch.delenv("GRAPHOPT_FUSED", raising=False)
    monkeypatch.delenv("CXX", raising=False)


def tensor(name, dtype, shape):
    return helper.make_tensor_value_info(name, CODES.get(dtype, dtype), shape)


def one_node_model(kernel, inputs, outputs):
    """A model whose one node is the kernel's op; ``inputs``/``outputs`` are value infos."""
    node = helper.make_node(kernel.op_name, [i.name for i in inputs], [o.name for o in outputs],
                            domain=kernel.domain)
    graph = helper.make_graph([node], "fused", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(kernel.domain, 1)])
    model.ir_version = IR_VERSION
    return model


def session(kernel, model):
    return ort.InferenceSession(model.SerializeToString(), kernel.session_options(),
                                providers=["CPUExecutionProvider"])


def axpy_session(kernel, shape=None):
    inputs = [tensor("x", np.float32, shape), tensor("y", np.float32, shape), tensor("s", np.float32, [])]
    return session(kernel, one_node_model(kernel, inputs, [tensor("z", np.float32, shape)]))


@needs_compiler
def test_axpy_matches_numpy_exactly():
    """out = x + s * y, rounded as two float32 operations (no FMA contraction), keeps x's shape."""
    kernel = native.compile_kernel(AXPY)
    assert (kernel.op_name, kernel.domain) == ("Fused_test_axpy", "ai.graphopt.fused")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 100)).astype(np.float32)
    y = rng.standard_normal((10, 100)).astype(np.float32)
    s = np.array(0.3, np.float32)
    (z,) = axpy_session(kernel).run(None, {"x": x, "y": y, "s": s})
    assert z.shape == (10, 100) and z.dtype == np.float32
    np.testing.assert_array_equal(z, x + s * y)
    (empty,) = axpy_session(kernel, shape=[None]).run(None, {"x": x[:0, 0], "y": y[:0, 0], "s": s})
    assert empty.shape == (0,)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_bound_onto_inputs_are_updated_in_place(dtype):
    """Momentum SGD with both outputs bound by IOBinding onto the p and m input buffers, over two steps."""
    kernel = native.compile_kernel(MOMENTUM.format(T=C_TYPES[dtype], code=CODES[dtype]))
    shape = (7, 33)
    elementwise = [tensor(name, dtype, shape) for name in ("p", "m", "g")]
    scalars = [tensor("lr", dtype, []), tensor("beta", dtype, [])]
    outputs = [tensor("p_out", dtype, shape), tensor("m_out", dtype, shape)]
    run = session(kernel, one_node_model(kernel, elementwise + scalars, outputs))
    rng = np.random.default_rng(1)
    p, m = rng.standard_normal(shape).astype(dtype), np.zeros(shape, dtype)
    lr, beta = np.array(0.1, dtype), np.array(0.9, dtype)
    p_expected, m_expected = p.copy(), m.copy()
    for _ in range(2):
        g = rng.standard_normal(shape).astype(dtype)
        binding = run.io_binding()
        for name, array in {"p": p, "m": m, "g": g, "lr": lr, "beta": beta}.items():
            binding.bind_input(name, "cpu", 0, dtype, array.shape, array.ctypes.data)
        binding.bind_output("p_out", "cpu", 0, dtype, shape, p.ctypes.data)
        binding.bind_output("m_out", "cpu", 0, dtype, shape, m.ctypes.data)
        run.run_with_iobinding(binding)
        assert [value.data_ptr() for value in binding.get_outputs()] == [p.ctypes.data, m.ctypes.data]
        m_expected = beta * m_expected + g
        p_expected = p_expected - lr * m_expected
        np.testing.assert_array_equal(m, m_expected)
        np.testing.assert_array_equal(p, p_expected)


@needs_compiler
def test_threads_update_row_ranges_of_one_buffer_in_place():
    """As the executor runs it: one session, each thread one range of rows, each run bound to views of the buffers."""
    kernel = native.compile_kernel(MOMENTUM.format(T="float", code=1))
    elementwise = [tensor(name, np.float32, [None]) for name in ("p", "m", "g")]
    scalars = [tensor("lr", np.float32, []), tensor("beta", np.float32, [])]
    outputs = [tensor("p_out", np.float32, [None]), tensor("m_out", np.float32, [None])]
    run = session(kernel, one_node_model(kernel, elementwise + scalars, outputs))
    rng = np.random.default_rng(3)
    p, m, g = (rng.standard_normal(4000).astype(np.float32) for _ in range(3))
    lr, beta = np.array(0.01, np.float32), np.array(0.5, np.float32)
    m_expected = beta * m + g
    p_expected = p - lr * m_expected

    def update(rows):
        binding = run.io_binding()
        for name, array in {"p": p[rows], "m": m[rows], "g": g[rows], "lr": lr, "beta": beta}.items():
            binding.bind_input(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
        binding.bind_output("p_out", "cpu", 0, np.float32, p[rows].shape, p[rows].ctypes.data)
        binding.bind_output("m_out", "cpu", 0, np.float32, m[rows].shape, m[rows].ctypes.data)
        run.run_with_iobinding(binding)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(update, [slice(start, start + 1000) for start in range(0, 4000, 1000)]))
    np.testing.assert_array_equal(m, m_expected)
    np.testing.assert_array_equal(p, p_expected)


@needs_compiler
def test_reduction_writes_the_sum_into_a_0d_double():
    kernel = native.compile_kernel(SUM_OF_SQUARES)
    model = one_node_model(kernel, [tensor("x", np.float32, [None])], [tensor("total", TensorProto.DOUBLE, [])])
    x = np.random.default_rng(2).standard_normal(1001).astype(np.float32)
    (total,) = session(kernel, model).run(None, {"x": x})
    assert total.shape == () and total.dtype == np.float64
    assert total == pytest.approx(math.fsum(float(v) ** 2 for v in x), rel=1e-12)


@needs_compiler
def test_mismatched_element_counts_give_a_clear_error():
    run = axpy_session(native.compile_kernel(AXPY), shape=[None])
    x, y = np.ones(6, np.float32), np.ones(5, np.float32)
    with pytest.raises(Exception, match="elementwise input 1 has 5 elements but input 0 has 6"):
        run.run(None, {"x": x, "y": y, "s": np.array(1, np.float32)})


@needs_compiler
def test_scalar_input_with_several_elements_gives_a_clear_error():
    kernel = native.compile_kernel(AXPY)
    inputs = [tensor("x", np.float32, [None]), tensor("y", np.float32, [None]), tensor("s", np.float32, None)]
    run = session(kernel, one_node_model(kernel, inputs, [tensor("z", np.float32, None)]))
    with pytest.raises(Exception, match="scalar input 2 has 3 elements, expected 1"):
        run.run(None, {"x": np.ones(4, np.float32), "y": np.ones(4, np.float32), "s": np.ones(3, np.float32)})


@needs_compiler
def test_second_compile_reuses_the_cached_library():
    first = native.compile_kernel(AXPY)
    runs = build.compiler_runs
    start = time.perf_counter()
    second = native.compile_kernel(AXPY)
    elapsed = time.perf_counter() - start
    assert build.compiler_runs == runs
    assert second == first
    assert elapsed < 0.1


@needs_compiler
def test_new_cache_folder_and_library_are_private(tmp_path, monkeypatch):
    folder = tmp_path / "a" / "kernels"
    monkeypatch.setenv("GRAPHOPT_CACHE", str(folder))
    kernel = native.compile_kernel(AXPY)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert kernel.library_path.parent == folder.resolve()
    assert kernel.library_path.stat().st_mode & 0o077 == 0
    names = {kernel.library_path.name, kernel.library_path.name + ".sha256", cache.LOCK_NAME}
    assert {path.name for path in folder.iterdir()} == names
    assert all(path.stat().st_mode & 0o077 == 0 for path in folder.iterdir())


@needs_compiler
def test_tampered_library_is_not_loaded_and_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path))
    kernel = native.compile_kernel(AXPY)
    original = kernel.library_path.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    kernel.library_path.write_bytes(bytes(tampered))

    with pytest.raises(native.UnsafeCacheError, match="contents changed"):
        kernel.session_options()
    runs = build.compiler_runs
    with pytest.warns(UserWarning, match="contents changed since it was built"):
        rebuilt = native.compile_kernel(AXPY)
    assert build.compiler_runs == runs + 1
    assert rebuilt.library_path.read_bytes() != bytes(tampered)
    (z,) = axpy_session(rebuilt).run(None, {"x": np.ones(3, np.float32), "y": np.full(3, 2, np.float32),
                                            "s": np.array(0.5, np.float32)})
    np.testing.assert_array_equal(z, np.full(3, 2, np.float32))


@needs_compiler
def test_concurrent_first_builds_compile_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path))
    runs = build.compiler_runs
    with ThreadPoolExecutor(3) as pool:
        kernels = list(pool.map(lambda _: native.compile_kernel(AXPY), range(3)))
    assert build.compiler_runs == runs + 1
    assert len(set(kernels)) == 1


@needs_compiler
def test_library_without_its_record_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path))
    kernel = native.compile_kernel(AXPY)
    os.unlink(str(kernel.library_path) + ".sha256")
    runs = build.compiler_runs
    with pytest.warns(UserWarning, match="record .* is missing"):
        native.compile_kernel(AXPY)
    assert build.compiler_runs == runs + 1


@needs_compiler
def test_one_fused_kernel_per_session_options():
    """onnxruntime takes a custom domain from one library per session: a second kernel is refused up front."""
    options = native.compile_kernel(AXPY).session_options()
    with pytest.raises(native.FusedBuildError, match="each fused kernel needs its own session"):
        native.compile_kernel(SUM_OF_SQUARES).session_options(options)


def test_group_writable_cache_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "kernels"
    folder.mkdir()
    folder.chmod(0o770)
    monkeypatch.setenv("GRAPHOPT_CACHE", str(folder))
    with pytest.raises(native.UnsafeCacheError, match="writable by group or others"):
        native.compile_kernel(AXPY)
    status = native.available()
    assert not status and "writable by group or others" in status.reason
    assert list(folder.iterdir()) == []


def test_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path))
    monkeypatch.setattr(cache.os, "geteuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(native.UnsafeCacheError, match="not by the current user"):
        native.compile_kernel(AXPY)


def test_graphopt_fused_0_disables_fused_kernels(monkeypatch):
    monkeypatch.setenv("GRAPHOPT_FUSED", "0")
    status = native.available()
    assert not status
    assert "GRAPHOPT_FUSED=0" in status.reason
    with pytest.raises(native.FusedBuildError, match="GRAPHOPT_FUSED=0"):
        native.compile_kernel(AXPY)


def test_old_onnxruntime_makes_fused_kernels_unavailable(monkeypatch):
    monkeypatch.setattr(availability.ort, "__version__", "1.16.3")
    status = native.available()
    assert not status and "onnxruntime 1.16.3 is older than 1.17" in status.reason


def test_missing_compiler_makes_fused_kernels_unavailable(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    status = native.available()
    assert not status and "CXX='/nonexistent/c++'" in status.reason
    with pytest.raises(native.FusedBuildError, match="does not work"):
        native.compile_kernel(AXPY)


@needs_compiler
def test_available_here():
    status = native.available()
    assert status, status.reason


@needs_compiler
def test_syntax_error_raises_with_the_compilers_message():
    broken = AXPY.replace("Fused_test_axpy", "Fused_test_broken").replace("z[i] = x[i] + s * y[i];",
                                                                         "z[i] = x[i] + s * y[i]")
    with pytest.raises(native.FusedBuildError, match="rejected the fused kernel") as raised:
        native.compile_kernel(broken)
    assert "fragment:14" in raised.value.compiler_output
    assert "expected ';'" in str(raised.value)


def test_fragment_without_op_name_is_refused():
    with pytest.raises(native.FusedBuildError, match="defines no GRAPHOPT_OP_NAME"):
        native.compile_kernel(AXPY.replace("#define GRAPHOPT_OP_NAME", "// no name:"))


def test_fallback_warning_is_given_once_per_reason(monkeypatch):
    monkeypatch.setattr(availability, "_warned", set())
    with pytest.warns(RuntimeWarning) as caught:
        native.warn_fallback("no compiler")
        native.warn_fallback("no compiler")
        native.warn_fallback("GRAPHOPT_FUSED=0 is set")
    assert [str(w.message).count("no compiler") for w in caught] == [1, 0]


def test_requested_api_version_is_in_the_installed_onnxruntime():
    """The library requests C API 17 (onnxruntime 1.17): the installed onnxruntime must be at least that."""
    assert native.ORT_API_VERSION == 17
    major, minor = (int(part) for part in ort.__version__.split(".")[:2])
    assert (major, minor) >= (1, 17)
