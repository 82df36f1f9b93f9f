"""The training benchmarks of tools/bench.py: one training iteration of an MLP against
PyTorch eager mode, and the time to build and compile a ResNet-50-sized training step.

Both build their ONNX models here with onnx.helper, in float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim
from graphopt.runtime import Runtime

try:
    import torch
except ImportError:  # the torch peers are skipped
    torch = None


def mlp_model(dims: list[int], rng: np.random.Generator) -> onnx.ModelProto:
    """``Gemm -> Relu`` layers of widths ``dims`` (the last without Relu), torch.nn.Linear's layout."""
    nodes, inits, x = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(dims, dims[1:])):
        bound = 1 / np.sqrt(n_in)
        inits += [numpy_helper.from_array(rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32), f"fc{i}.w"),
                  numpy_helper.from_array(rng.uniform(-bound, bound, n_out).astype(np.float32), f"fc{i}.b")]
        last = i == len(dims) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.w", f"fc{i}.b"], [out if last else f"z{i}"], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        x = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", dims[-1]])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


GRAPHOPT_PEERS = {  # name: (Runtime(fused=...), Trainer(fused_step=...))
    "graphopt-one-graph-standard": (False, None),  # forward, backward and a standard-operator update: one call
    "graphopt-two-calls-fused": (None, "two_calls"),  # gradients into the flat buffers, then the fused kernels
    "graphopt-one-graph-fused": (None, "graph"),  # the step graph with the fused kernels' nodes: one call
}


def default_peer() -> str:
    """The peer that a plain ``Trainer`` runs here (where fused kernels are built, as ``DEFAULT_FUSED_STEP`` says)."""
    from graphopt.fused.runtime import runs_fused
    from graphopt.training.trainer import DEFAULT_FUSED_STEP

    if not runs_fused(Runtime()):
        return "graphopt-one-graph-standard"
    return "graphopt-one-graph-fused" if DEFAULT_FUSED_STEP == "graph" else "graphopt-two-calls-fused"


def mlp_iteration_peers(dims: list[int], batch: int, threads: int) -> dict[str, Callable[[], None]]:
    """One Adam training iteration (forward, cross-entropy, backward, update) of the same MLP,
    same weights, same batch: graphopt's Trainer three ways (`GRAPHOPT_PEERS`; the two fused ones only
    where fused kernels are built here) and, when torch is importable, PyTorch eager mode with torch's
    default (for-loop) Adam and with its fused Adam."""
    rng = np.random.default_rng(0)
    model = mlp_model(dims, rng)
    x = rng.standard_normal((batch, dims[0])).astype(np.float32)
    y = rng.integers(0, dims[-1], batch).astype(np.int64)
    runs = {}
    for name, (fused, fused_step) in GRAPHOPT_PEERS.items():
        trainer = graphopt.Trainer(model, losses.cross_entropy("logits"),
                                   optim.Adam(lr=1e-3, runtime=Runtime(threads=threads, fused=fused)),
                                   fused_step=fused_step)
        if fused is None and not trainer.fused_kernels:
            continue  # no fused kernels here: the standard step again
        runs[name] = lambda trainer=trainer: trainer.step({"x": x}, labels=y)
    if torch is None:
        return runs
    torch.set_num_threads(threads)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for variant, kwargs in (("torch-eager", {}), ("torch-eager-fused", {"fused": True})):
        layers = []
        for i, (n_in, n_out) in enumerate(zip(dims, dims[1:])):
            linear = torch.nn.Linear(n_in, n_out)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weights[f"fc{i}.w"]))
                linear.bias.copy_(torch.from_numpy(weights[f"fc{i}.b"]))
            layers += [linear, torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers[:-1])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, **kwargs)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def iteration(net=net, opt=opt, tx=tx, ty=ty):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(tx), ty).backward()
            opt.step()
        runs[variant] = iteration
    return runs


def conv_bn_layers(rng: np.random.Generator, nodes: list, inits: list) -> Callable[..., str]:
    """``conv_bn(x, name, c_in, c_out, k, stride=1, relu=True)``: appends to ``nodes`` and ``inits`` a
    ``k``x``k`` Conv (He-initialized, no bias, "same" padding), a BatchNormalization (fresh statistics) and,
    with ``relu``, a Relu; returns the last output's name."""

    def conv_bn(x: str, name: str, c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> str:
        w = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2 / (c_in * k * k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        for stat, value in (("scale", 1), ("bias", 0), ("mean", 0), ("var", 1)):
            inits.append(numpy_helper.from_array(np.full(c_out, value, np.float32), f"{name}.bn.{stat}"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.c"], strides=[stride] * 2,
                                      pads=[k // 2] * 4))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.c"] + [f"{name}.bn.{s}" for s in
                                      ("scale", "bias", "mean", "var")], [f"{name}.n"]))
        if not relu:
            return f"{name}.n"
        nodes.append(helper.make_node("Relu", [f"{name}.n"], [f"{name}.r"]))
        return f"{name}.r"

    return conv_bn


def classifier_model(name: str, nodes: list, inits: list, x: str, sample: tuple[int, ...],
                     fc: np.ndarray) -> onnx.ModelProto:
    """The float32 convolutional net of ``nodes`` and ``inits`` (input ``x`` of ``["batch", *sample]``, features
    ``x``), finished with global average pooling, a flatten and a Gemm of weight ``fc`` (``[classes, width]``,
    bias zero) to ``logits``."""
    classes = fc.shape[0]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1)]
    inits += [numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b")]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *sample])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def resnet50_model(rng: np.random.Generator, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-50 (v1.5: stride in the 3x3 conv) as an inference ONNX model: 53 Conv + BatchNormalization
    pairs, 16 bottleneck blocks of [3, 4, 6, 3], global average pooling and a 1000-way Gemm."""
    nodes, inits = [], []
    conv_bn = conv_bn_layers(rng, nodes, inits)

    x = conv_bn("x", "stem", 3, 64, 7, stride=2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, c_in = "pool", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            name, stride = f"layer{stage + 1}.{b}", (2 if stage and not b else 1)
            h = conv_bn(x, f"{name}.conv1", c_in, width, 1)
            h = conv_bn(h, f"{name}.conv2", width, width, 3, stride)
            h = conv_bn(h, f"{name}.conv3", width, 4 * width, 1, relu=False)
            shortcut = conv_bn(x, f"{name}.down", c_in, 4 * width, 1, stride, relu=False) if b == 0 else x
            nodes.append(helper.make_node("Add", [h, shortcut], [f"{name}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
            x, c_in = f"{name}.out", 4 * width
    fc = (rng.standard_normal((classes, 2048)) * 0.01).astype(np.float32)
    return classifier_model("resnet50", nodes, inits, x, (3, 224, 224), fc)


def resnet50_build_time(threads: int) -> dict:
    """Seconds to set up a Trainer, build the training-step graph (autodiff + Adam's update)
    and compile it in onnxruntime, for ResNet-50; the graph's node counts and parameters."""
    model = resnet50_model(np.random.default_rng(0))
    start = time.perf_counter()
    trainer = graphopt.Trainer(model, losses.cross_entropy("logits"),
                               optim.Adam(lr=1e-3, runtime=Runtime(threads=threads)))
    setup = time.perf_counter() - start
    runtime = trainer.optimizer._runtime
    compile_calls = []
    compile_model = runtime.compile

    def timed_compile(step_model, **options):
        begin = time.perf_counter()
        executable = compile_model(step_model, **options)
        compile_calls.append((time.perf_counter() - begin, step_model))
        return executable

    runtime.compile = timed_compile
    start = time.perf_counter()
    trainer._training_step()
    total = time.perf_counter() - start
    compile_s, step_model = compile_calls[0]
    return {"setup_s": setup, "build_s": total - compile_s, "compile_s": compile_s,
            "forward_nodes": len(model.graph.node), "step_nodes": len(step_model.graph.node),
            "parameters": int(sum(p.data.size for p in trainer.parameters.values()))}
