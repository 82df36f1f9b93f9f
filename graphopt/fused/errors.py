"""The error raised when a chunked update cannot be compiled to a fused kernel."""

from __future__ import annotations


class NotFusable(Exception):
    """A node (or the model's shape) has no translation to the fused kernel; the message names it.

    The executor catches it and keeps the standard (chunked) path.
    """
