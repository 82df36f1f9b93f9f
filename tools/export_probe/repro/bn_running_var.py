"""Root cause (fixed on branch probe): BatchNorm's running_var after a graphopt step took ONNX's
biased batch variance; torch takes the unbiased one (n / (n - 1)). The export-side trap shown
too: TorchScript export of a train() module runs it, advancing the module's running stats.

    python tools/export_probe/repro/bn_running_var.py
"""
import io
import warnings

import numpy as np
import onnx
import torch

import graphopt
from graphopt import losses, optim

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
                          torch.nn.Flatten())
x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
before = net[1].running_mean.clone()
buf = io.BytesIO()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(net.train(), (torch.from_numpy(x),), buf, dynamo=False, input_names=["x"],
                      output_names=["output"], opset_version=17, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.TRAINING)
print("export ran the module (running_mean moved):", not torch.equal(before, net[1].running_mean))
trainer = graphopt.Trainer(onnx.load_from_string(buf.getvalue()), losses.mse("output"), optim.SGD(lr=0.0))
trainer.step({"x": x}, labels=np.zeros((2, 64), np.float32))
net(torch.from_numpy(x))
for name in ("1.running_mean", "1.running_var"):
    ours, theirs = trainer.buffers[name], dict(net.named_buffers())[name].numpy()
    print(name, "max |graphopt - torch| =", np.abs(ours - theirs).max())
