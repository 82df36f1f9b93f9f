"""Every test draws its random data from generators seeded by its own node id, never from a stream that the
tests before it in the process advanced, so a test sees the same data in any order, alone, or on any
pytest-xdist worker.

Before each test, `_random_state_of_this_test` replaces the module-level generator ``rng`` of every loaded
``tests.*`` module (tests/gradcheck.py's ``r()`` and the helpers of a test module draw from theirs) by a
fresh one seeded from the test's node id and the module's name, and seeds numpy's legacy global generator
and, when loaded, torch's. What a module draws at import (its parametrized cases) comes from its own
generator, fresh at import, so it does not depend on the other modules either. A test module whose helpers
another test module uses is imported at the top of that module (not inside a test), so that its generator
is loaded, and reseeded, before the test runs.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


@pytest.fixture(autouse=True)
def _random_state_of_this_test(request, monkeypatch):
    test = _seed(request.node.nodeid)
    for name, module in list(sys.modules.items()):
        if name.startswith("tests.") and isinstance(getattr(module, "rng", None), np.random.Generator):
            monkeypatch.setattr(module, "rng", np.random.default_rng([test, _seed(name)]))
    state = np.random.get_state()
    np.random.seed(test)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(test)
    yield
    np.random.set_state(state)

