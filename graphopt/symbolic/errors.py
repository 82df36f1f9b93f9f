"""The error raised while a graph is built, and where it points."""

from __future__ import annotations

import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class GraphBuildError(TypeError):
    """A node could not be built: wrong dtype, incompatible shapes, bad argument.

    Raised at the Python line that asked for the node; the message names the
    operator and that line, so the mistake is found without running anything.
    """


def caller_location() -> str:
    """`file:line` of the first frame outside the symbolic package."""
    frame = sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def build_error(op_type: str, problem: str) -> GraphBuildError:
    return GraphBuildError(f"{op_type}: {problem} (node built at {caller_location()})")
