"""The zoo (tools/zoo.py): models exported from torch, trained 5 steps by graphopt's Trainer
(SGD with momentum, AdamW) against torch's own steps, at ONNX Runtime's default optimization
level (tests/against_torch.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tests.against_torch import OPTIMIZERS, train_against_torch  # noqa: E402
from tools.zoo import CASES  # noqa: E402


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_trains_like_torch(case, optimizer):
    train_against_torch(case, optimizer)
