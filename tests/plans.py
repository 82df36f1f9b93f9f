"""Which path (`graphopt.optim.execution`'s chunked or per-tensor plan) each group's update took."""

from __future__ import annotations

from graphopt.optim.execution import _ChunkedPlan, _TensorPlan


def plans_taken(monkeypatch) -> list[str]:
    """The plan classes that run from now on, in order, by name ("_ChunkedPlan", "_TensorPlan")."""
    taken = []
    for cls in (_ChunkedPlan, _TensorPlan):
        original = cls.run

        def run(self, _original=original):
            taken.append(type(self).__name__)
            _original(self)

        monkeypatch.setattr(cls, "run", run)
    return taken
