"""Root cause (fixed on branch probe): torch's default (eval-mode, constant-folding) export
merges initializers of equal values; a fresh BatchNorm1d's running_var becomes Identity(weight)
and running_mean Identity(bias). The Trainer raised "its running statistic ... must be an
initializer"; now it parts them (graphopt.preparation.untie_running_statistics).

    python tools/export_probe/repro/eval_export_merges_bn_stats.py
"""
import io
import warnings

import numpy as np
import onnx
import torch

import graphopt
from graphopt import losses, optim

net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
buf = io.BytesIO()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(net, (torch.randn(6, 8),), buf, dynamo=False, input_names=["x"], output_names=["output"])
model = onnx.load_from_string(buf.getvalue())
print([(n.op_type, list(n.input), list(n.output)) for n in model.graph.node if n.op_type == "Identity"])
trainer = graphopt.Trainer(model, losses.cross_entropy("output"), optim.SGD(lr=0.1))
print("trains:", trainer.step({"x": np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)},
                              labels=np.arange(6) % 4), "buffers:", sorted(trainer.buffers))
