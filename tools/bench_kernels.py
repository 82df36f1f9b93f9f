"""Where a chunked update's time goes: single operators, and variants of Adam's row body.

    python tools/bench_kernels.py ops              # ns per element of one operator, by row length
    python tools/bench_kernels.py adam --size 64M  # Adam row bodies side by side with torch's fused Adam

``ops`` runs one operator in a Scan body over rows of K float32 elements (one ONNX
Runtime thread, 256 KB of rows per input, so everything stays in a core's L2) and
reports nanoseconds per element: the cost of one pass, and of a Scan iteration when
rows are short.

``adam`` builds Adam's Scan body as graphopt emits it (lazily scaled moments, see
graphopt/update/chunked.py) and variants of it by hand, and times each over N parameters on
two threads, interleaved with graphopt's own optimizer and ``torch.optim.Adam(fused=True)``:

* ``graphopt-body``: graphopt's 7 operators (``Gemm, Mul, Gemm, Sqrt, Add, Div, Gemm``);
* ``square-as-pow``: ``Pow(g, 2)`` instead of ``Mul(g, g)``;
* ``first-moment-mul-add``: ``m + c * g`` as ``Mul`` and ``Add`` instead of one ``Gemm``;
* ``second-moment-first``: the ``v`` chain before the ``m`` update (shorter live ranges);
* ``rows-only``: three ``Gemm`` s that read g, m, v, p and write m, v, p, no other
  arithmetic: the cost of touching the rows, without Adam's four in-cache passes;
* ``graphopt-body-1-thread``: graphopt's body on one thread (the scaling of two).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import graphopt  # noqa: E402
from graphopt import optim  # noqa: E402
from graphopt.runtime import Executable, Runtime  # noqa: E402
from graphopt.runtime.parallel import RowParallel  # noqa: E402
from tools.bench import measure, parse_size, summary  # noqa: E402

FLOAT = TensorProto.FLOAT
SCALARS = {"c1": 0.1, "c2": 1e-3, "a": -1e-3, "eps": 1e-8, "two": 2.0, "s": 0.5}  # Gemm's A is [1, 1]


def scan_model(body_nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str], k: int) -> onnx.ModelProto:
    """A Scan over ``[rows, 1, k]`` inputs whose body runs ``body_nodes`` on one ``[1, k]`` row."""
    row = [1, k]
    body = helper.make_graph(body_nodes, "row", [helper.make_tensor_value_info(n, FLOAT, row) for n in inputs],
                             [helper.make_tensor_value_info(n, FLOAT, row) for n in outputs])
    constants = [helper.make_tensor(n, FLOAT, [1, 1] if n in ("c1", "c2", "a", "s") else [], [v])
                 for n, v in SCALARS.items()]
    scan = helper.make_node("Scan", inputs, [f"{n}.rows" for n in outputs], num_scan_inputs=len(inputs), body=body)
    graph = helper.make_graph([scan], "bench", [helper.make_tensor_value_info(n, FLOAT, [None, 1, k]) for n in inputs],
                              [helper.make_tensor_value_info(f"{n}.rows", FLOAT, [None, 1, k]) for n in outputs],
                              constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bind(sess: ort.InferenceSession, arrays: dict[str, np.ndarray]) -> ort.IOBinding:
    """Inputs bound zero-copy, every output written into ``out``."""
    binding = sess.io_binding()
    for i in sess.get_inputs():
        a = arrays[i.name]
        binding.bind_input(i.name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
    for o in sess.get_outputs():
        out = arrays["out"]
        binding.bind_output(o.name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    return binding


OPS = {  # name: (operator, inputs, attributes); x and y are rows, the rest scalars
    "Identity": ("Identity", ["x"], {}), "Relu": ("Relu", ["x"], {}), "Sqrt": ("Sqrt", ["y"], {}),
    "Mul x*s": ("Mul", ["x", "eps"], {}), "Add x+s": ("Add", ["x", "eps"], {}),
    "Mul x*x": ("Mul", ["x", "x"], {}), "Pow x^2": ("Pow", ["x", "two"], {}),
    "Mul x*y": ("Mul", ["x", "y"], {}), "Add x+y": ("Add", ["x", "y"], {}), "Div x/y": ("Div", ["x", "y"], {}),
    "Gemm s*x+y": ("Gemm", ["s", "x", "y"], {}), "Gemm s*x": ("Gemm", ["s", "x"], {}),
}


def bench_ops(row_lengths: list[int], repeats: int = 7) -> dict[str, dict[int, float]]:
    """ns per element of each operator of `OPS`, for each row length (one thread, in L2)."""
    results: dict[str, dict[int, float]] = {name: {} for name in OPS}
    for k in row_lengths:
        rows = max(1, (1 << 16) // k)
        x = np.random.default_rng(0).standard_normal((rows, 1, k), dtype=np.float32)
        arrays = {"x": x, "y": np.abs(x) + 1, "out": np.empty_like(x)}
        for name, (op, inputs, attributes) in OPS.items():
            model = scan_model([helper.make_node(op, inputs, ["o"], **attributes)], ["x", "y"], ["o"], k)
            sess = session(model)
            binding = bind(sess, arrays)
            for _ in range(20):
                sess.run_with_iobinding(binding)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(50):
                    sess.run_with_iobinding(binding)
                samples.append((time.perf_counter() - start) / 50 / x.size * 1e9)
            results[name][k] = float(np.median(samples))
    return results


def adam_body(variant: str) -> list[onnx.NodeProto]:
    """Adam's row body over lazily scaled moments: ``m += c1 g; v += c2 g g; p += a m / (sqrt(v) + eps)``."""
    node = helper.make_node
    first = [node("Gemm", ["c1", "g", "m"], ["m.new"])]
    square = node("Pow", ["g", "two"], ["g2"]) if variant == "square-as-pow" else node("Mul", ["g", "g"], ["g2"])
    second = [square, node("Gemm", ["c2", "g2", "v"], ["v.new"]), node("Sqrt", ["v.new"], ["root"]),
              node("Add", ["root", "eps"], ["denominator"])]
    step = [node("Div", ["m.new", "denominator"], ["direction"]), node("Gemm", ["a", "direction", "p"], ["p.new"])]
    if variant == "first-moment-mul-add":
        first = [node("Mul", ["g", "c1"], ["increment"]), node("Add", ["m", "increment"], ["m.new"])]
    if variant == "second-moment-first":
        return second + first + step
    if variant == "rows-only":
        return [node("Gemm", [c, "g", s], [f"{s}.new"]) for c, s in (("c1", "m"), ("c2", "v"), ("a", "p"))]
    return first + second + step


ADAM_VARIANTS = ["graphopt-body", "square-as-pow", "first-moment-mul-add", "second-moment-first", "rows-only"]


def row_run(body: list[onnx.NodeProto], buffers: dict[str, np.ndarray], k: int, threads: int) -> Callable[[], None]:
    """A Scan model over ``[rows, 1, k]`` views of ``buffers``, in place, run by graphopt's `RowParallel`."""
    model = scan_model(body, ["p", "g", "m", "v"], ["p.new", "m.new", "v.new"], k)
    rows = {name: b.reshape(-1, 1, k) for name, b in buffers.items()}
    rows.update({f"{name}.new.rows": rows[name] for name in ("p", "m", "v")})  # written in place
    return RowParallel(Executable(session(model)), rows, {}, threads).run


def adam_peers(n: int, k: int) -> dict[str, Callable[[], None]]:
    rng = np.random.default_rng(0)
    grads = rng.standard_normal(n, dtype=np.float32)
    params = [graphopt.Parameter(np.zeros(n, np.float32))]
    opt = optim.Adam(params, lr=1e-3, runtime=Runtime(threads=2, chunk_size=k))
    params[0].grad = grads
    runs: dict[str, Callable[[], None]] = {"graphopt-optimizer": opt.step}
    buffers = {"p": np.zeros(n, np.float32), "g": grads, "m": np.zeros(n, np.float32),
               "v": np.zeros(n, np.float32)}
    for variant in ADAM_VARIANTS:
        runs[variant] = row_run(adam_body(variant), buffers, k, threads=2)
    runs["graphopt-body-1-thread"] = row_run(adam_body("graphopt-body"), buffers, k, threads=1)
    try:
        import torch
    except ImportError:
        return runs
    torch.set_num_threads(2)
    tensor = torch.zeros(n, requires_grad=True)
    tensor.grad = torch.from_numpy(grads.copy())
    runs["torch-fused"] = torch.optim.Adam([tensor], lr=1e-3, fused=True).step
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=["ops", "adam"])
    parser.add_argument("--rows", default="1024,4096,16384,32768,65536", help="row lengths for ops")
    parser.add_argument("--size", default="64M", help="parameters for adam")
    parser.add_argument("--chunk", type=int, default=32768, help="row length for adam")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print("command: python tools/bench_kernels.py " + " ".join(argv or sys.argv[1:]))
    if args.section == "ops":
        lengths = [int(k) for k in args.rows.split(",")]
        results = bench_ops(lengths)
        print("ns per element, one thread, rows in L2; row length:")
        print(f"{'operator':12s}" + "".join(f"{k:>9d}" for k in lengths))
        for name, by_length in results.items():
            print(f"{name:12s}" + "".join(f"{by_length[k]:9.3f}" for k in lengths))
        return
    n = parse_size(args.size)
    runs = adam_peers(n, args.chunk)
    times = measure(runs, args.rounds, 3, lambda text: (sys.stderr.write(f"\r\033[K{text}"), sys.stderr.flush()))
    sys.stderr.write("\r\033[K")
    reference = "torch-fused" if "torch-fused" in times else "graphopt-optimizer"
    reference_ms = summary(times[reference])["median_ms"]
    print(f"Adam, N={args.size}, rows of {args.chunk}, 2 threads unless named: ms per step, median [min-max] "
          f"of {args.rounds} rounds, and the ratio to {reference}")
    for name, samples in times.items():
        s = summary(samples)
        print(f"  {name:24s} {s['median_ms']:8.1f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]  "
              f"{s['median_ms'] / reference_ms:.2f}x")


if __name__ == "__main__":
    main()
