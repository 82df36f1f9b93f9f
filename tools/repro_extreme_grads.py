"""Extreme but finite float32 gradients: graphopt against torch.optim, step by step (issue 10, item 2).

Found by fuzzing (tests/test_properties.py's strategies, gradients of magnitude 1e-38 to 3e38
compared with torch); each case is a single float32 parameter and a fixed gradient sequence.
The issue's rule: wherever torch's update stays finite, graphopt's must too. Prints, per case
and step, both parameters and whether they agree; exits with status 1 if any case disagrees.

    python -m tools.repro_extreme_grads
"""

from __future__ import annotations

import sys

import numpy as np

import graphopt
from graphopt import optim

CASES = [
    # (optimizer, settings, initial value, gradients)
    ("Adam", dict(lr=0.0625, betas=(0.0, 0.5)), 0.5, [1e30]),
    ("Adam", dict(lr=0.1, betas=(0.0, 0.999)), 0.5, [1e20]),
    ("AdamW", dict(lr=0.1, betas=(0.0, 0.999)), 0.5, [1e30]),
    ("Adam", dict(lr=0.0625, betas=(0.5, 0.5)), 0.1257302165031433, [-3.9631458e37, 1.9212679e38]),
    # torch's exp_avg_sq stays finite (8.5e37); graphopt's does not, and the step is lost
    ("Adam", dict(lr=0.0625, betas=(0.5, 0.5)), 0.3455841839313507,
     [8.216181452660802e18, 3.304370816170328e18, -1.3031572341098807e19]),
    ("RMSprop", dict(lr=0.03125, alpha=0.5), 0.3455841839313507,
     [8.216181452660802e18, 3.304370816170328e18, -1.3031572341098807e19]),
    ("RMSprop", dict(lr=0.1, centered=True), 0.5, [1e30]),
    ("SGD", dict(lr=0.125, momentum=0.5), 0.5, [2e19]),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), 0.5, [1e20]),
    # controls that agree: the same magnitudes without the triggering setting
    ("Adam", dict(lr=0.0625, betas=(0.5, 0.5)), 0.5, [1e30]),
    ("SGD", dict(lr=0.1), 0.5, [1e30]),
    ("RMSprop", dict(lr=0.1, momentum=0.5), 0.5, [1e30]),
]


def run_case(kind: str, config: dict, init: float, grads: list[float]) -> list[tuple[float, float, float]]:
    """(gradient, graphopt's parameter, torch's parameter) after each step."""
    import torch

    p = graphopt.Parameter(np.array(init, np.float32))
    opt = getattr(optim, kind)([p], **config)
    q = torch.nn.Parameter(torch.tensor(np.array(init, np.float32)))
    reference = getattr(torch.optim, kind)([q], **config)
    rows = []
    for g in grads:
        g = np.array(g, np.float32)
        p.grad = g
        opt.step()
        q.grad = torch.tensor(g)
        reference.step()
        rows.append((float(g), float(p.data), float(q.detach())))
    return rows


def agree(ours: float, theirs: float) -> bool:
    return (np.isfinite(ours) or not np.isfinite(theirs)) and bool(np.isclose(ours, theirs, rtol=1e-5, atol=0,
                                                                                 equal_nan=True))


def main() -> int:
    failures = 0
    for kind, config, init, grads in CASES:
        rows = run_case(kind, config, init, grads)
        ok = all(agree(ours, theirs) for _, ours, theirs in rows)
        failures += not ok
        print(f"{'ok      ' if ok else 'MISMATCH'} {kind} {config} from {init:.4g}")
        for g, ours, theirs in rows:
            print(f"           grad {g: .4g}: graphopt {ours: .7g}  torch {theirs: .7g}")
    print(f"{failures} of {len(CASES)} cases disagree with torch")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
