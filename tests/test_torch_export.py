"""A CNN exported by torch.onnx (in training mode) and trained by graphopt's Trainer takes the
same steps as torch itself: parameters and BatchNormalization running statistics agree."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import losses, optim

torch = pytest.importorskip("torch")


def test_torch_exported_cnn_trains_like_torch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.train(), torch.randn(2, 1, 8, 8), buffer, dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, opset_version=17,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
    model = onnx.load_from_string(buffer.getvalue())
    trainer = graphopt.Trainer(model, losses.cross_entropy("logits"), optim.SGD(lr=0.1, momentum=0.9))
    reference = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 6)
        loss = trainer.step({"x": x}, labels=y)
        reference.zero_grad()
        expected = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        expected.backward()
        reference.step()
        assert loss == pytest.approx(expected.item(), rel=1e-5)
    state = net.state_dict()
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, state[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    for name in ("1.running_mean", "1.running_var"):  # the variance with torch's unbiased batch variance
        np.testing.assert_allclose(trainer.buffers[name], state[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_chunk_and_split_as_dynamo_writes_them_without_its_optimizer_train_like_torch():
    """SplitToSequence + SequenceAt (torch.onnx.export(dynamo=True, optimize=False)) become a Split."""
    pytest.importorskip("onnxscript")

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 9)

        def forward(self, x):
            a, b, c = self.fc(x).chunk(3, dim=1)
            d, e = c.split([1, 2], dim=1)
            return a * torch.sigmoid(b) + torch.cat([e, d], dim=1)

    torch.manual_seed(0)
    net = Gated()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.from_numpy(x),), dynamo=True, optimize=False, input_names=["x"],
                                    output_names=["y"], verbose=False)
    model = program.model_proto
    assert "SplitToSequence" in {n.op_type for n in model.graph.node}
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.1))
    t = np.ones((5, 3), np.float32)
    loss = trainer.step({"x": x}, labels=t)
    expected = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(t))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(trainer.parameters[name].data, (p - 0.1 * p.grad).detach().numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
