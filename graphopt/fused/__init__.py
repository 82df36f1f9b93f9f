"""Fused update kernels: a chunked update's Scan body compiled to one C++ loop (a kernel fragment,
/work/FUSED_CONTRACT.md) that an ONNX Runtime custom op runs, reading each input and writing each
output once per step.

`fuse` takes `graphopt.update.chunked.ChunkedModels` and gives `FusedModels`: per model (update, and
the group-wide reduction when there is one) the fragment and an ONNX model with the chunked model's
input and output names in which one custom-op node (domain `DOMAIN`, op type the fragment's hashed
``GRAPHOPT_OP_NAME``) replaces the Scan (`graphopt.fused.model`). The code is generated from the
graph, node by node (`graphopt.fused.body`, `graphopt.fused.ops`), never from per-optimizer templates,
so a user's transform is fused as the built-in ones are; a node without a translation raises
`NotFusable` naming it, and the executor keeps the standard path. `graphopt.fused.step` puts the fused
updates of a `Trainer`'s groups inside its training-step graph (one call per step, all the kernels in one
library: `graphopt.native.compile_kernels`).

Op types the optimizers' bodies emit (every optimizer and option of ``tests/fused_cases.py``, float32
and float64, EMA/SWA averaging and compiled lr schedules included; ``tests/test_fused.py`` checks the
list): Add, Sub, Mul, Div, Gemm (``s * x + y`` on rows), Sqrt, Max (amsgrad, Adamax, clip_norm),
Clip (clip_value), Where (Adagrad/Rprop step-count choices, RMSprop centered, SparseAdam masks,
averaging), Sign (Lion, Signum, Rprop), Abs (Adamax), IsInf (RMSprop centered), Less and Greater
(Rprop), Equal (SparseAdam); reduction bodies: Mul, Clip, ReduceSumSquare, Cast. Also translated,
for users' transforms: Min, Neg, Reciprocal, Floor, Ceil, Identity, Pow, IsNaN, LessOrEqual,
GreaterOrEqual, And, Or, Xor, Not, Cast between float, double, bool and int64. Each follows ONNX
Runtime's CPU kernel bit for bit, signed zeros and NaN included (see `graphopt.fused.ops`).
Adafactor, LAMB, LARS, Muon and ``clip_per_tensor`` have no chunked form (`NotChunkable`), so
nothing to fuse.
"""

from graphopt.fused.errors import NotFusable
from graphopt.fused.model import DOMAIN, FusedModel, FusedModels, fuse, fuse_model
from graphopt.fused.ops import TRANSLATIONS

__all__ = ["DOMAIN", "TRANSLATIONS", "FusedModel", "FusedModels", "NotFusable", "fuse", "fuse_model"]
