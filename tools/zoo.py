"""The zoo: small torch models of the architectures people train, as graphopt trains them.

tests/test_zoo.py trains each against torch step for step; `tools/bench.py --sections zoo`
times a training step of each against PyTorch eager. A `Case` builds its module (seeded by
the caller) and draws its batches; `export` exports it with `graphopt.from_torch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch

import graphopt

nn = torch.nn


@dataclass(frozen=True)
class Case:
    """A module to build (seeded) and the batches it trains on.

    ``batch(rng)`` returns the inputs (by ONNX input name, in the module's argument order)
    and the labels; ``loss`` is ``"cross_entropy"`` (int64 labels, classes on axis 1) or ``"mse"``."""

    name: str
    build: Callable[[], torch.nn.Module]
    batch: Callable[[np.random.Generator], tuple[dict[str, np.ndarray], np.ndarray]]
    loss: str = "cross_entropy"


def export(module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``module`` as a user exports it for training: `graphopt.from_torch`."""
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    return graphopt.from_torch(module, args, input_names=list(inputs), output_names=["output"])


def images(channels=1, size=8, classes=10, batch=4):
    def batch_(rng):
        x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
        return {"x": x}, rng.integers(0, classes, batch)
    return batch_


def vectors(features=8, classes=4, batch=6, lead=()):
    def batch_(rng):
        return ({"x": rng.standard_normal((batch, *lead, features)).astype(np.float32)},
                rng.integers(0, classes, batch))
    return batch_


def tokens(vocab=20, length=7, classes=3, batch=4, per_token=False):
    def batch_(rng):
        labels = rng.integers(0, vocab if per_token else classes, (batch, length) if per_token else batch)
        return {"tokens": rng.integers(0, vocab, (batch, length))}, labels
    return batch_


def _linear_3d():
    # the shape that made ONNX Runtime's Transpose/MatMul fusion read a weight after its update
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _linear_3d_batch(rng):
    return ({"x": rng.standard_normal((2, 3, 8)).astype(np.float32)},
            rng.standard_normal((2, 3, 4)).astype(np.float32))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV2Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(12, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class EncoderClassifier(nn.Module):
    def __init__(self, d=16, vocab=20, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.head(self.layer(self.embed(tokens)).mean(dim=1))


class CausalSelfAttention(nn.Module):
    def __init__(self, d, heads, length):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.register_buffer("causal", torch.tril(torch.ones(length, length, dtype=torch.bool)))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPT(nn.Module):
    """A GPT-style decoder: token and position embeddings, pre-norm blocks with causal
    attention, and the output head tied to the token embedding."""

    def __init__(self, vocab=20, d=16, length=7, heads=2):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.randn(length, d) * 0.1)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = CausalSelfAttention(d, heads, length)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, tokens):
        x = self.tokens(tokens) + self.positions[: tokens.shape[1]]
        x = x + self.attention(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        logits = self.ln_f(x) @ self.tokens.weight.t()  # tied to the embedding
        return logits.transpose(1, 2)  # classes on axis 1, as cross-entropy takes them


class TextCNN(nn.Module):
    def __init__(self, vocab=20, d=8, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.convs = nn.ModuleList([nn.Conv1d(d, 6, k) for k in (2, 3)])
        self.head = nn.Linear(12, classes)

    def forward(self, tokens):
        x = self.embed(tokens).transpose(1, 2)
        pooled = [torch.relu(conv(x)).max(dim=2).values for conv in self.convs]
        return self.head(torch.cat(pooled, dim=1))


class UNet(nn.Module):
    """Two levels; the decoder goes up with a ConvTranspose (or with ``up``, an nn.Upsample)."""

    def __init__(self, up: nn.Module | None = None):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2) if up is None else nn.Sequential(up, nn.Conv2d(8, 4, 1))
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        a = self.down1(x)
        return self.out(torch.cat([a, self.up(self.down2(a))], dim=1))


def segmentation(rng):
    return {"x": rng.standard_normal((2, 1, 8, 8)).astype(np.float32)}, rng.integers(0, 3, (2, 8, 8))


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.decode = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), nn.ReLU(),
                                    nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1))

    def forward(self, x):
        return self.decode(self.encode(x))


def reconstruction(rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    return {"x": x}, x


class EmbeddingBagOfWords(nn.Module):
    def __init__(self, vocab=20, d=8, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(dim=1))


class EinsumAttention(nn.Module):
    """Multi-head self-attention written with torch.einsum, then a PReLU / Mish MLP head."""

    def __init__(self, vocab=20, d=16, heads=2, classes=3):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.head = nn.Sequential(nn.Linear(d, 16), nn.PReLU(16), nn.Linear(16, 16), nn.Mish(), nn.Linear(16, classes))

    def forward(self, tokens):
        x = self.embed(tokens)
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in self.qkv(x).chunk(3, dim=-1))
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads), dim=-1)
        y = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
        return self.head((x + self.out(y)).mean(dim=1))


class RecurrentClassifier(nn.Module):
    """Embedding, a two-layer LSTM (head on its last output) or a bidirectional GRU (head on both
    directions' final states)."""

    def __init__(self, cell: str, vocab=20, d=8, hidden=12, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        if cell == "lstm":
            self.rnn = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        else:
            self.rnn = nn.GRU(d, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(hidden * (2 if cell == "gru" else 1), classes)

    def forward(self, tokens):
        out, state = self.rnn(self.embed(tokens))
        if isinstance(self.rnn, nn.LSTM):
            return self.head(out[:, -1])  # through the sequence output Y
        return self.head(torch.cat([state[-2], state[-1]], dim=-1))  # through the final states Y_h


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.group = nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1, bias=False)  # InstanceNorm would cancel a bias: zero gradient
        self.instance = nn.InstanceNorm2d(4, affine=True)
        self.layer = nn.LayerNorm([4, 6, 6])
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.conv2(torch.relu(self.group(self.conv1(x))))
        y = self.layer(torch.relu(self.instance(y)))
        return self.head(torch.flatten(y, 1))


CASES = [
    Case("linear_3d", _linear_3d, _linear_3d_batch, loss="mse"),
    Case("mlp", lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)),
         vectors()),
    Case("lenet", LeNet, images()),
    Case("resnet_like", ResNetLike, images(channels=3)),
    Case("mobilenet_v2_like", MobileNetV2Like, images(channels=3)),
    Case("transformer_encoder", EncoderClassifier, tokens()),
    Case("gpt_decoder", GPT, tokens(per_token=True)),
    Case("einsum_attention_prelu_mish", EinsumAttention, tokens()),
    Case("lstm_classifier", lambda: RecurrentClassifier("lstm"), tokens()),
    Case("gru_classifier", lambda: RecurrentClassifier("gru"), tokens()),
    Case("text_cnn", TextCNN, tokens()),
    Case("unet_conv_transpose", UNet, segmentation),
    Case("unet_upsample_nearest", lambda: UNet(nn.Upsample(scale_factor=2, mode="nearest")), segmentation),
    Case("unet_upsample_bilinear", lambda: UNet(nn.Upsample(scale_factor=2, mode="bilinear")), segmentation),
    Case("autoencoder", AutoEncoder, reconstruction, loss="mse"),
    Case("embedding_mean", EmbeddingBagOfWords, tokens()),
    Case("norms", Norms, images(channels=2, size=6, classes=5)),
]
