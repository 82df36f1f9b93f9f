"""Fused update kernels: a chunked update's Scan body compiled to one C++ loop (a kernel fragment,
/work/FUSED_CONTRACT.md) run as an ONNX Runtime custom op, one memory pass per step.

`fuse` takes `graphopt.update.chunked.ChunkedModels` and gives `FusedModels`: per model, the fragment
and an ONNX model in which one custom-op node (domain `DOMAIN`) replaces the Scan. A body node with
no translation (`graphopt.fused.ops`) raises `NotFusable`.
"""

from graphopt.fused.errors import NotFusable
from graphopt.fused.model import DOMAIN, FusedModel, FusedModels, fuse, fuse_model
from graphopt.fused.ops import TRANSLATIONS

__all__ = ["DOMAIN", "TRANSLATIONS", "FusedModel", "FusedModels", "NotFusable", "fuse", "fuse_model"]
