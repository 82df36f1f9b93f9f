"""NAdam, ASGD and Adafactor against the numpy reference (tests/reference.py, written from the
formulas): the options torch does not have (``scale``, ``clip_value``, ``clip_norm`` over the
group or per tensor, ``lr_mult``, ``decay_mult`` on a second group), with missing gradients, a
frozen-then-unfrozen parameter and a mid-run lr change, on every runtime layout
(`tests.test_optimizers.run_both`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_optimizers import RUNTIMES, run_both

CONFIGS = {
    "NAdam": [
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, scale=2.0, clip_norm=1.0),
        dict(lr=0.01, momentum_decay=6e-3, clip_value=0.5, maximize=True),
        dict(lr=0.01, clip_norm=0.5, clip_per_tensor=True),
    ],
    "ASGD": [
        dict(lr=0.02, t0=5, lambd=0.05, weight_decay=0.1),
        dict(lr=0.02, t0=0, alpha=0.5, scale=0.5, clip_norm=0.8, maximize=True),
        dict(lr=0.02, t0=3, clip_value=0.3, clip_norm=0.5, clip_per_tensor=True),
    ],
    "Adafactor": [
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, eps=(1e-4, 1e-2), beta2_decay=-0.5, d=1.5, scale=2.0, clip_norm=1.0),
        dict(lr=0.05, clip_value=0.5, clip_norm=0.5, clip_per_tensor=True, maximize=True, weight_decay=0.05),
    ],
}
CASES = [(kind, config) for kind, configs in CONFIGS.items() for config in configs]


def _case_id(case):
    kind, config = case
    return kind + "-" + "-".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_reference_float64(case, runtime):
    kind, config = case
    rng = np.random.default_rng(0)
    for opt, params, ref in run_both(kind, config, np.float64, rng, runtime):
        for g, group_params in enumerate(params):
            for i, p in enumerate(group_params):
                np.testing.assert_allclose(p.data, ref.groups[g]["params"][i], rtol=1e-10, atol=1e-12)
                ref_state = ref.state[g][i]
                state = opt.state.get(p, {})
                assert set(state) == set(ref_state), (g, i)
                for key, value in ref_state.items():
                    np.testing.assert_allclose(state[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{g}/{i}/{key}")
    assert opt.sessions_built == opt.sessions_before_change  # changing lr compiled nothing
