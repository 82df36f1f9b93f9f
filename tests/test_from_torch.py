"""`graphopt.from_torch` exports a module faithfully for training (names kept, equal-valued
parameters distinct, tied ones one initializer, the module left untouched, bad exports
refused), and the Trainer trains by default the model's weights, not an exporter's constants."""

from __future__ import annotations

import io
import json
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphopt
from graphopt import losses, optim, torch_export
from graphopt.preparation import PARAMETERS, exporter_constants

torch = pytest.importorskip("torch")
nn = torch.nn


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def train_both(net, model, batches, loss_fn, steps=3, lr=0.1):
    """SGD (momentum 0.9) on ``net`` in torch and on ``model`` with the Trainer: the losses agree
    to rel 1e-5 at every step and the trained parameters at the end."""
    trainer = graphopt.Trainer(model, loss_fn[0], optim.SGD(lr=lr, momentum=0.9))
    reference = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    for x, y in batches[:steps]:
        loss = trainer.step({"x": x}, labels=y)
        reference.zero_grad()
        expected = loss_fn[1](net(torch.from_numpy(x)), torch.from_numpy(y))
        expected.backward()
        reference.step()
        assert loss == pytest.approx(expected.item(), rel=1e-5)
    state = dict(net.named_parameters())
    assert set(trainer.parameters) == set(state)
    for name, p in trainer.parameters.items():
        np.testing.assert_allclose(p.data, state[name].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    return trainer


def test_an_mlp_keeps_its_parameter_names_and_computes_the_modules_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    model = graphopt.from_torch(net, torch.randn(4, 3), input_names=["x"], output_names=["y"])
    names = [name for name, _ in net.named_parameters()]
    assert list(initializers(model)) == names
    assert json.loads(dict((e.key, e.value) for e in model.metadata_props)[PARAMETERS]) == names
    x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)  # another batch size: dynamic
    (y,) = run(model, {"x": x})
    np.testing.assert_allclose(y, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert net.training  # restored
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32))
               for _ in range(3)]
    train_both(net, model, batches, (losses.mse("y"), nn.functional.mse_loss))


def test_default_names_and_a_module_left_in_eval_mode():
    torch.manual_seed(0)
    net = nn.Linear(3, 2).eval()
    model = graphopt.from_torch(net, (torch.randn(4, 3),))
    assert [i.name for i in model.graph.input] == ["input_0"]
    assert [o.name for o in model.graph.output] == ["output_0"]
    assert not net.training


def test_two_fresh_layer_norms_stay_distinct_initializers():
    class TwoNorms(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.first, self.second = nn.Linear(4, 4), nn.LayerNorm(4), nn.LayerNorm(4)

        def forward(self, x):
            return self.second(torch.relu(self.first(self.inner(x))) * 2)

    torch.manual_seed(0)
    net = TwoNorms()
    model = graphopt.from_torch(net, torch.randn(3, 4), input_names=["x"], output_names=["y"])
    weights = initializers(model)
    assert list(weights) == [name for name, _ in net.named_parameters()]
    np.testing.assert_array_equal(weights["first.weight"], weights["second.weight"])  # equal values, two tensors
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32))
               for _ in range(3)]
    trainer = train_both(net, model, batches, (losses.mse("y"), nn.functional.mse_loss))
    assert not np.allclose(trainer.parameters["first.weight"].data, trainer.parameters["second.weight"].data)


class TinyGPT(nn.Module):
    """Token and position embeddings, one causal transformer block, a LayerNorm and a head tied
    to the token embedding; logits flattened to ``[batch * time, vocab]``."""

    def __init__(self, vocab=11, width=8, time=6):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.randn(time, width) * 0.1)
        self.block = nn.TransformerEncoderLayer(width, 2, 16, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, idx):
        x = self.tokens(idx) + self.positions[: idx.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(idx.shape[1])
        logits = self.head(self.norm(self.block(x, src_mask=mask, is_causal=True)))
        return logits.reshape(-1, logits.shape[-1])


def test_a_gpt_with_a_tied_head_trains_one_initializer_like_torch():
    torch.manual_seed(0)
    net = TinyGPT()
    # a fixed batch: the Gather (embedding) gradient needs the static shape of its indices
    model = graphopt.from_torch(net, torch.randint(0, 11, (3, 6)), input_names=["x"], output_names=["logits"],
                                dynamic_batch=False)
    weights = initializers(model)
    assert "tokens.weight" in weights and "head.weight" not in weights
    assert list(weights) == [name for name, _ in net.named_parameters()]  # one entry per Parameter
    rng = np.random.default_rng(3)
    batches = [(rng.integers(0, 11, (3, 6)), rng.integers(0, 11, 18)) for _ in range(3)]
    trainer = train_both(net, model, batches, (losses.cross_entropy("logits"), nn.functional.cross_entropy))
    np.testing.assert_array_equal(trainer.evaluate({"x": batches[0][0]})["logits"].shape, (18, 11))


def test_a_tied_parameter_written_under_both_names_becomes_one_initializer(monkeypatch):
    """Were an exporter to write a tied parameter once per name, the copies would train apart:
    from_torch makes them one initializer again, under the first name."""
    export = torch_export._export

    def untying(*args):
        model = export(*args)
        copy = onnx.TensorProto()
        copy.CopyFrom(next(t for t in model.graph.initializer if t.name == "tokens.weight"))
        copy.name = "head.weight"
        model.graph.initializer.append(copy)
        reader = next(n for n in model.graph.node if "tokens.weight" in n.input and n.op_type != "Gather")
        reader.input[:] = ["head.weight" if name == "tokens.weight" else name for name in reader.input]
        return model

    monkeypatch.setattr(torch_export, "_export", untying)
    torch.manual_seed(0)
    net = TinyGPT()
    model = graphopt.from_torch(net, torch.randint(0, 11, (2, 6)), dynamic_batch=False)
    assert [t.name for t in model.graph.initializer].count("tokens.weight") == 1
    assert "head.weight" not in initializers(model)
    assert not any("head.weight" in n.input for n in model.graph.node)


def test_batch_norm_buffers_are_kept_and_the_module_is_left_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    example = torch.randn(5, 4)
    random_state = torch.random.get_rng_state()
    model = graphopt.from_torch(net, example, input_names=["x"], output_names=["y"])
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.equal(torch.random.get_rng_state(), random_state)
    weights = initializers(model)
    np.testing.assert_array_equal(weights["1.running_mean"], before["1.running_mean"].numpy())
    np.testing.assert_array_equal(weights["1.running_var"], before["1.running_var"].numpy())
    # the model's own mode is eval: running statistics, no dropout
    x = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    (y,) = run(model, {"x": x})
    np.testing.assert_allclose(y, net.eval()(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.1))
    assert set(trainer.parameters) == {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"}
    assert set(trainer.buffers) == {"1.running_mean", "1.running_var"}


def test_a_batch_norm_cnn_trains_like_torch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(64, 10))
    model = graphopt.from_torch(net, torch.randn(2, 1, 8, 8), input_names=["x"], output_names=["logits"])
    rng = np.random.default_rng(6)
    batches = [(rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 6)) for _ in range(3)]
    trainer = train_both(net, model, batches, (losses.cross_entropy("logits"), nn.functional.cross_entropy))
    # ONNX's running variance takes the biased batch variance where torch takes the unbiased one;
    # the running means agree
    np.testing.assert_allclose(trainer.buffers["1.running_mean"], net[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_example_inputs_must_be_tensors():
    with pytest.raises(TypeError, match=r"example_inputs\[1\] is a int"):
        graphopt.from_torch(nn.Linear(3, 2), (torch.randn(2, 3), 4))


def test_a_parameter_forward_does_not_use_warns_and_is_left_out():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match=r"\['spare.weight', 'spare.bias'\] do not affect the outputs"):
        model = graphopt.from_torch(Unused(), torch.randn(2, 3))
    assert list(initializers(model)) == ["used.weight", "used.bias"]


def test_frozen_torch_parameters_are_not_trained_by_default():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)
    model = graphopt.from_torch(net, torch.randn(2, 3), output_names=["y"])
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.1))
    assert list(trainer.parameters) == ["0.bias", "1.weight", "1.bias"]


def test_a_parameter_the_exporter_renamed_raises_naming_it(monkeypatch):
    export = torch_export._export

    def renaming(*args):
        model = export(*args)
        model.graph.initializer[0].name = "onnx::Gemm_7"
        for node in model.graph.node:
            node.input[:] = ["onnx::Gemm_7" if name == "0.weight" else name for name in node.input]
        return model

    monkeypatch.setattr(torch_export, "_export", renaming)
    with pytest.raises(ValueError, match=r"no initializer for the parameters \['0.weight'\]"):
        graphopt.from_torch(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 3))


def test_the_output_check_catches_a_model_unlike_the_module(monkeypatch):
    """Without putting back the running statistics (tracing in training mode updated them),
    the exported model computes other outputs than the module: the check says so."""
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    monkeypatch.setattr(torch_export, "_put_buffers", lambda model, module: None)
    with pytest.raises(ValueError, match=r"outputs differ from the module's .*'output_0': 'max abs difference"):
        graphopt.from_torch(net, torch.randn(8, 4) * 3 + 1)
    model = graphopt.from_torch(net, torch.randn(8, 4) * 3 + 1, check=False)  # the check is what raised
    assert len(model.graph.node) == 2


# -- the default trainables of a plain export --------------------------------------------------

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.a(x)) * 0.25


def export(net, x, dynamo: bool) -> onnx.ModelProto:
    """``torch.onnx.export`` as a user calls it, in training mode (dynamo's default optimizer on)."""
    if dynamo:
        pytest.importorskip("onnxscript")
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.onnx.export(net.train(), (x,), dynamo=True, input_names=["x"], output_names=["y"],
                                         training=torch.onnx.TrainingMode.TRAINING, verbose=False).model_proto
        finally:
            logging.disable(logging.NOTSET)
    stream = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.train(), (x,), stream, dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=17, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
    return onnx.load_from_string(stream.getvalue())


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_scaled_activations_constant_is_not_trained_unless_named(dynamo):
    torch.manual_seed(0)
    model = export(Scaled(), torch.randn(5, 4), dynamo)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.5))
    assert list(trainer.parameters) == ["a.weight", "a.bias"]
    for _ in range(5):
        trainer.step({"x": x}, labels=t)
    scalars = [name for name, v in initializers(model).items() if v.ndim == 0]
    assert scalars == (["val_0"] if dynamo else [])  # dynamo's optimizer folds 0.25 into an initializer
    if dynamo:
        assert initializers(trainer.export(kind="inference"))["val_0"] == np.float32(0.25)
        named = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.5), trainable=["a.*", "val_0"])
        assert list(named.parameters) == ["a.weight", "a.bias", "val_0"]
        named.step({"x": x}, labels=t)
        assert initializers(named.export(kind="inference"))["val_0"] != np.float32(0.25)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.groups = nn.GroupNorm(2, 8)
        self.temperature = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.block(x, src_mask=mask, is_causal=True)
        return self.groups(h.transpose(1, 2)).transpose(1, 2) / self.temperature


@pytest.mark.parametrize("dynamo", [False, True])
def test_exporter_constants_of_attention_and_group_norm_are_not_trained(dynamo):
    torch.manual_seed(0)
    net = Attention()
    model = export(net, torch.randn(2, 5, 8), dynamo)
    weights = initializers(model)
    constants = exporter_constants(model)
    assert "temperature" in constants  # a 0-d tensor in a plain export: trained only when named
    for name in constants:
        value = weights[name]
        is_mask = not np.all(np.abs(value) < 1e38)
        assert value.ndim == 0 or value.size == 1 or is_mask or set(np.unique(value)) <= {0.0, 1.0}, name
    if not dynamo:  # TorchScript keeps its constants as Constant nodes: the initializers are the parameters
        assert constants == ["temperature"]
        assert set(weights) == {name for name, _ in net.named_parameters()}
    else:  # dynamo folds a mask, the attention scale and GroupNorm's ones and zeros into initializers
        assert any(not np.all(np.abs(weights[n]) < 1e38) for n in constants)
        assert any(weights[n].size == 1 and weights[n].ndim == 1 for n in constants)
        assert sum(1 for n in constants if weights[n].ndim == 1 and weights[n].size == 2) == 2  # GroupNorm helpers
        trainer = graphopt.Trainer(model, losses.mse("y"), optim.SGD(lr=0.1))
        assert set(trainer.parameters) and not set(trainer.parameters) & set(constants)
        assert set(trainer.parameters) <= set(weights) - set(constants)
    # from_torch records the parameters: the temperature is one, and trained
    recorded = graphopt.Trainer(graphopt.from_torch(net, torch.randn(2, 5, 8), output_names=["y"]),
                                losses.mse("y"), optim.SGD(lr=0.1))
    assert set(recorded.parameters) == {name for name, _ in net.named_parameters()}
