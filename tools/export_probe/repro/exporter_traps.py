"""Minimal reproductions of the exporter traps the probe met (none is a graphopt bug; each
changes what an exported model trains). Run one or all:

    python tools/export_probe/repro/exporter_traps.py [name ...]

Settings as in tools/export_probe/run.py: a = TorchScript, training, no folding; b = a + folding;
c = TorchScript eval-mode default; d0 = dynamo optimize=False; d1 = dynamo default.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch

import graphopt
from graphopt import losses, optim
from tools.export_probe.run import export

nn, F = torch.nn, torch.nn.functional


def inits(model):
    return sorted(t.name for t in model.graph.initializer)


def ops(model):
    return sorted({n.op_type for n in model.graph.node})


def transposed_linear():
    """b, c, d1: a Linear on a 3-D input becomes MatMul with a pre-transposed constant: the
    parameter is trained under another name (onnx::MatMul_N / val_N), transposed."""
    m = export(nn.Linear(8, 4), {"x": np.ones((2, 3, 8), np.float32)}, "b", False)
    print("b initializers:", inits(m))


def folded_normalize():
    """b: F.normalize(self.weight) depends on parameters only: constant folding evaluates the
    norm at export time (a constant initializer); the gradient through the norm is lost."""
    class Cosine(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            return x @ F.normalize(self.weight, dim=1).t()
    torch.manual_seed(0)
    net = Cosine()
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    for setting in ("a", "b"):
        m = export(copy.deepcopy(net), {"x": x}, setting, False)
        trainer = graphopt.Trainer(m, losses.cross_entropy("output"), optim.SGD(lr=0.5), trainable=["weight"])
        trainer.step({"x": x}, labels=np.arange(5) % 4)
        ref = copy.deepcopy(net)
        F.cross_entropy(ref(torch.from_numpy(x)), torch.arange(5) % 4).backward()
        expected = (ref.weight - 0.5 * ref.weight.grad).detach().numpy()
        print(setting, "initializers:", inits(m), "max |graphopt - torch| after one SGD step:",
              float(np.abs(trainer.parameters["weight"].data - expected).max()))


def untied_embedding():
    """b: a head tied to the embedding (x @ emb.weight.t()) gets a folded, transposed copy of the
    weight: two parameters where torch has one."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, tokens):
            return self.emb(tokens) @ self.emb.weight.t()
    m = export(Tied(), {"tokens": np.arange(6).reshape(2, 3)}, "b", False)
    print("b initializers:", inits(m))


def merged_equal_initializers():
    """c, d1: initializers of equal values (fresh LayerNorm weights: ones) are merged; the
    torch names of all but one vanish (c: an Identity per name; d1: one shared initializer)."""
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.LayerNorm(4))
    for setting in ("c", "d1"):
        m = export(copy.deepcopy(net), {"x": np.ones((2, 4), np.float32)}, setting, False)
        print(setting, "initializers:", inits(m), "Identity:",
              [(n.input[0], n.output[0]) for n in m.graph.node if n.op_type == "Identity"])


def folded_batch_norm():
    """c: Conv + BatchNorm fused (eval export); d1: dynamo exports a train() BatchNorm as an
    inference-mode BatchNormalization and the optimizer folds it into the Conv. The BatchNorm's
    parameters vanish; d0 keeps them (Trainer then turns it to training mode)."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    for setting in ("c", "d0", "d1"):
        m = export(copy.deepcopy(net), {"x": np.ones((2, 1, 5, 5), np.float32)}, setting, False)
        print(setting, "initializers:", inits(m), "ops:", ops(m))


def relaid_recurrent_weights():
    """b, c, d1: LSTM/GRU weights concatenated and re-ordered (ONNX gate order) into new
    initializers: the torch parameters are not in the export under any layout-preserving name."""
    net = nn.LSTM(3, 2, batch_first=True)
    for setting in ("a", "b", "d1"):
        m = export(copy.deepcopy(net), {"x": np.ones((1, 4, 3), np.float32)}, setting, False)
        print(setting, "initializers:", inits(m))


def folded_expand():
    """d1: a cls token expanded to the (static) batch is folded: the parameter becomes a
    batch-sized constant."""
    class Cls(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Parameter(torch.randn(1, 1, 4))

        def forward(self, x):
            return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1).sum(1)
    for setting in ("d0", "d1"):
        m = export(Cls(), {"x": np.ones((3, 2, 4), np.float32)}, setting, False)
        print(setting, "initializers:", [(t.name, list(t.dims)) for t in m.graph.initializer])


def split_to_sequence():
    """d0: chunk() becomes SplitToSequence + SequenceAt, which have no gradient rule (d1
    rewrites them to Split)."""
    class Chunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            a, b = self.fc(x).chunk(2, dim=1)
            return a * b
    m = export(Chunk(), {"x": np.ones((2, 4), np.float32)}, "d0", False)
    print("d0 ops:", ops(m))
    try:
        graphopt.Trainer(m, losses.mse("output"), optim.SGD(lr=0.1)).step(
            {"x": np.ones((2, 4), np.float32)}, labels=np.zeros((2, 3), np.float32))
    except Exception as e:  # noqa: BLE001
        print(type(e).__name__, str(e)[:120])


def float64_conv():
    """any setting: ONNX Runtime's CPU provider has no float64 Conv; a float64 CNN fails when
    the training step is compiled."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()).double()
    m = export(net, {"x": np.ones((2, 1, 4, 4))}, "a", False)
    try:
        graphopt.Trainer(m, losses.mse("output"), optim.SGD(lr=0.1)).step(
            {"x": np.ones((2, 1, 4, 4))}, labels=np.zeros((2, 8)))
    except Exception as e:  # noqa: BLE001
        print(type(e).__name__, str(e)[:160])


TRAPS = {f.__name__: f for f in (transposed_linear, folded_normalize, untied_embedding, merged_equal_initializers,
                                  folded_batch_norm, relaid_recurrent_weights, folded_expand, split_to_sequence,
                                  float64_conv)}

if __name__ == "__main__":
    for name in sys.argv[1:] or TRAPS:
        print(f"== {name}: {TRAPS[name].__doc__.split(':')[0].strip()}")
        TRAPS[name]()
