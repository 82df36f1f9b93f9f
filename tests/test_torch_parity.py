"""Parity with torch.optim, parameter by parameter and state by state (skipped without torch).

``pip install torch==2.13.0`` installs a CPU build. Options torch does not have
(``scale``, ``clip_norm``, ``lr_mult``, ``decay_mult``) are checked against the
numpy reference in test_optimizers.py instead.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import optim

torch = pytest.importorskip("torch")

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, eps=1e-4, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.05)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, maximize=True)),
]
TORCH_STATE_SLOTS = {"SGD": ("momentum_buffer",), "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                     "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                     "RMSprop": ("square_avg", "grad_avg", "momentum_buffer")}


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 2e-6)])
@pytest.mark.parametrize("kind, kwargs", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_matches_torch_optim(kind, kwargs, dtype, rtol, atol):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(dtype) for s in [(4, 3), (6,), ()]]
    ours = [graphopt.Parameter(a) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = getattr(optim, kind)(ours, **kwargs)
    ref = getattr(torch.optim, kind)(theirs, foreach=False, **kwargs)
    for step in range(20):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in init]
        skip = {1} if step == 5 else set()  # params[1] has no gradient in one step
        if step == 10:
            for group in (*opt.param_groups, *ref.param_groups):
                group["lr"] *= 0.5
        for i, (p, q, g) in enumerate(zip(ours, theirs, grads)):
            p.grad = None if i in skip else g
            q.grad = None if i in skip else torch.from_numpy(g.copy())
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"step {step}")
            for slot in TORCH_STATE_SLOTS[kind]:
                if slot in ref.state[q]:
                    np.testing.assert_allclose(opt.state[p][slot], ref.state[q][slot].numpy(), rtol=rtol,
                                               atol=atol, err_msg=f"{slot} at step {step}")
            if "step" in ref.state[q]:
                assert opt.state[p]["step"] == int(ref.state[q]["step"])
