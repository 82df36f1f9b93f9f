"""Architectures beyond tools/zoo.py for the probe (tools/export_probe/run.py).

A `PCase` is a zoo `Case` plus what the probe needs: the loss kind (``nll``: the model
returns log-probabilities, torch takes ``nll_loss``, graphopt ``cross_entropy`` of them,
which is the same number since log_softmax is idempotent; ``self``: the model takes the
labels as its last input and returns the scalar loss), the dtype, and whether the batch
axis is exported dynamic (then the training batches differ in size from the exported one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tools import zoo

nn = torch.nn
F = torch.nn.functional


@dataclass(frozen=True)
class PCase:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[np.random.Generator, int], tuple[dict[str, np.ndarray], np.ndarray]]  # (rng, batch size)
    loss: str = "cross_entropy"
    dtype: type = np.float32
    dynamic: bool = False
    size: int = 4


def _f(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def vec(features=8, classes=4, dtype=np.float32):
    return lambda rng, b: ({"x": _f(rng, b, features, dtype=dtype)}, rng.integers(0, classes, b))


def img(channels=3, size=8, classes=10):
    return lambda rng, b: ({"x": _f(rng, b, channels, size, size)}, rng.integers(0, classes, b))


def from_zoo(case: zoo.Case) -> PCase:
    return PCase(case.name, case.build, lambda rng, b: case.batch(rng), case.loss)


class MHAPadding(nn.Module):
    def __init__(self, d=16, classes=3):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x, pad):
        y, _ = self.attn(x, x, x, key_padding_mask=pad)
        return self.head(y.mean(dim=1))


def mha_batch(rng, b, t=5, d=16):
    pad = np.zeros((b, t), bool)
    pad[:, -2:] = rng.random((b, 2)) < 0.5
    return {"x": _f(rng, b, t, d), "pad": pad}, rng.integers(0, 3, b)


class Decoder(nn.Module):
    def __init__(self, d=16, t=5, classes=3):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(d, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(t))
        self.head = nn.Linear(d, classes)

    def forward(self, tgt, memory):
        return self.head(self.layer(tgt, memory, tgt_mask=self.causal).mean(dim=1))


def decoder_batch(rng, b):
    return {"tgt": _f(rng, b, 5, 16), "memory": _f(rng, b, 6, 16)}, rng.integers(0, 3, b)


class ViT(nn.Module):
    def __init__(self, d=16, patch=4, size=8, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, d) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, activation="gelu", batch_first=True,
                                                  norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), p], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
            nn.Conv2d(8, 16, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.fc(x) / self.temperature


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.fc(torch.tanh(self.fc(x))))


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


def mlp(out=4):
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, out))


class LogSoftmaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = mlp()

    def forward(self, x):
        return F.log_softmax(self.mlp(x), dim=1)


class SoftmaxLogHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = mlp()

    def forward(self, x):
        return torch.log(torch.softmax(self.mlp(x), dim=1))


class NLLInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = mlp()

    def forward(self, x, target):
        return F.nll_loss(nn.LogSoftmax(dim=1)(self.mlp(x)), target)


def with_target(features=8, classes=4):
    return lambda rng, b: ({"x": _f(rng, b, features), "target": rng.integers(0, classes, b)}, None)


class Conv1dMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bilinear = nn.Bilinear(6, 5, 4)

    def forward(self, a, b):
        return self.bilinear(a, b)


class Cosine(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 12)
        self.weight = nn.Parameter(torch.randn(4, 12))

    def forward(self, x):
        return 10.0 * F.normalize(self.fc(x), dim=1) @ F.normalize(self.weight, dim=1).t()


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(8, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.head(torch.cumsum(self.fc(x), dim=1))


class Gather(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(8, 6), nn.Linear(3, 4)

    def forward(self, x, index):
        return self.head(torch.gather(self.fc(x), 1, index))


class MaskedFill(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(8, 6), nn.Linear(6, 4)

    def forward(self, x, mask):
        return self.head(self.fc(x).masked_fill(mask, 0.0))


class ChunkSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(8, 18), nn.Linear(6, 4)

    def forward(self, x):
        a, b, c = self.fc(x).chunk(3, dim=1)
        d, e = c.split([2, 4], dim=1)
        return self.head(a * torch.sigmoid(b) + torch.cat([torch.tanh(d), e], dim=1))


class BN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def tokens_b(vocab=20, length=7, classes=3):
    return lambda rng, b: ({"tokens": rng.integers(0, vocab, (b, length))}, rng.integers(0, classes, b))


NEW = [
    PCase("encoder_classifier", zoo.EncoderClassifier, tokens_b()),
    PCase("mha_key_padding", MHAPadding, mha_batch),
    PCase("transformer_decoder", Decoder, decoder_batch),
    PCase("vit_like", ViT, img()),
    PCase("depthwise_silu_hardswish", DepthwiseSeparable, img()),
    PCase("scalar_temperature", Temperature, vec()),
    PCase("weight_sharing", Shared, vec()),
    PCase("frozen_submodule", Frozen, vec()),
    PCase("log_softmax_nll", LogSoftmaxHead, vec(), loss="nll"),
    PCase("softmax_log_nll", SoftmaxLogHead, vec(), loss="nll"),
    PCase("nll_inside_model", NLLInside, with_target(), loss="self"),
    PCase("bn1d_dropout0_mlp", BN1d, vec(), size=6),
    PCase("conv1d_adaptive_maxpool", Conv1dMaxPool, lambda rng, b: ({"x": _f(rng, b, 4, 10)}, rng.integers(0, 3, b))),
    PCase("bilinear", Bilinear, lambda rng, b: ({"a": _f(rng, b, 6), "b": _f(rng, b, 5)}, rng.integers(0, 4, b))),
    PCase("cosine_classifier", Cosine, vec()),
    PCase("cumsum", Cumsum, vec()),
    PCase("gather", Gather, lambda rng, b: ({"x": _f(rng, b, 8), "index": rng.integers(0, 6, (b, 3))},
                                            rng.integers(0, 4, b))),
    PCase("masked_fill", MaskedFill, lambda rng, b: ({"x": _f(rng, b, 8), "mask": rng.random((b, 6)) < 0.3},
                                                     rng.integers(0, 4, b))),
    PCase("chunk_split", ChunkSplit, vec()),
    PCase("dynamic_mlp", lambda: mlp(), vec(), dynamic=True),
    PCase("dynamic_bn1d", BN1d, vec(), dynamic=True, size=6),
    PCase("dynamic_lenet", zoo.LeNet, img(channels=1), dynamic=True),
    PCase("dynamic_encoder", zoo.EncoderClassifier, tokens_b(), dynamic=True),
    PCase("float64_mlp", lambda: mlp(), vec(dtype=np.float64), dtype=np.float64),
    PCase("float64_encoder", zoo.EncoderClassifier, tokens_b(), dtype=np.float64),
    PCase("float64_lenet", zoo.LeNet, lambda rng, b: ({"x": _f(rng, b, 1, 8, 8, dtype=np.float64)},
                                                      rng.integers(0, 10, b)), dtype=np.float64),
]

CASES = [from_zoo(c) for c in zoo.CASES] + NEW
