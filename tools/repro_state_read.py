"""Reading an optimizer's state changes its later results (issue 10, item 2), found by fuzzing.

Two Adam optimizers over equal parameters get equal gradients; one reads ``opt.state``
(or ``state_dict()``) after the first step. After the second step their parameters should be
bitwise equal; prints the elements that differ and exits with status 1 if any do.

    python -m tools.repro_state_read
"""

from __future__ import annotations

import sys

import numpy as np

import graphopt
from graphopt import optim

CONFIG = dict(lr=0.0625, betas=(0.0, 0.5), eps=1e-8)
SHAPES = [(), (), ()]


def run(read: str | None, steps: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    init = [np.asarray(rng.standard_normal(s), np.float32) for s in SHAPES]
    params = [graphopt.Parameter(a, name=f"w{i}") for i, a in enumerate(init)]
    opt = optim.Adam(params, **CONFIG)
    grad_rng = np.random.default_rng(0)
    for t in range(steps):
        for p, s in zip(params, SHAPES):
            p.grad = np.asarray(1e-3 * grad_rng.standard_normal(s), np.float32)
        opt.step()
        if t == 0 and read == "state":
            [dict(opt.state.get(p, {})) for p in params]
        elif t == 0 and read == "state_dict":
            opt.state_dict()
    return [p.data.copy() for p in params]


def main() -> int:
    plain = run(None)
    differing = 0
    for read in ("state", "state_dict"):
        after_read = run(read)
        for i, (a, b) in enumerate(zip(plain, after_read)):
            if a.tobytes() != b.tobytes():
                differing += 1
                print(f"after reading {read}: w{i} is {b!r}, without the read {a!r}")
    print(f"Adam {CONFIG}, {len(SHAPES)} scalars, 2 steps: {differing} parameters differ after a read")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
