"""Vector-Jacobian rules, one per ONNX operator, each emitting standard ``ai.onnx`` ops.

Importing this package registers every rule in `RULES`; see `registry` for the
contract a rule follows.
"""

from graphopt.autodiff.rules import (  # noqa: F401 - each module registers its rules
    einsum,
    elementwise,
    linear,
    losses,
    normalization,
    pooling,
    reductions,
    resize,
    shapes,
)
from graphopt.autodiff.rules.registry import PARTIAL, RULES, supported

__all__ = ["PARTIAL", "RULES", "supported"]
