"""Newton-Schulz orthogonalization of a matrix update, as torch.optim.Muon computes it."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.symbolic import matmul, maximum, sqrt, transpose
from graphopt.transforms.base import Context, Transform, Updates


@dataclass(frozen=True)
class Orthogonalize(Transform):
    """Replace each 2-D update ``G`` by ``NS_k(G)``, an approximation of ``U V^T`` (``G = U S V^T``).

    With ``(a, b, c)`` the group's ``ns_a``, ``ns_b``, ``ns_c`` and ``k = ns_steps`` (structure:
    each iteration is three ``MatMul`` nodes):

    1. ``X <- G^T`` if ``G`` has more rows than columns, else ``X <- G`` (so ``X X^T`` is the smaller Gram matrix)
    2. ``X <- X / max(||X||_F, eps)``
    3. ``k`` times: ``A <- X X^T``; ``B <- b * A + c * A A``; ``X <- a * X + B X``
    4. ``G <- X^T`` if transposed in 1, else ``X``

    torch runs these in bfloat16; graphopt runs them in the parameter's dtype (see `graphopt.optim.Muon`).
    The Frobenius norm is a per-tensor value, so a chain with this transform takes the per-tensor path.
    """

    ns_steps: int = 5

    def apply(self, updates: Updates, ctx: Context) -> Updates:
        a, b, c, eps = ctx.hyper("ns_a"), ctx.hyper("ns_b"), ctx.hyper("ns_c"), ctx.hyper("eps")
        result = []
        for i, g in enumerate(updates):
            norm = sqrt(ctx.tensor_sum_of_squares(g))  # first: a chunked update has no per-tensor norm
            if g.ndim != 2:
                raise ValueError(f"Orthogonalize: the update of {ctx.param_names[i]!r} must be a 2-D matrix, "
                                 f"got shape {list(g.shape)}")
            tall = g.shape[0] > g.shape[1]
            x = transpose(g) if tall else g
            x = x / maximum(norm, eps)
            for _ in range(self.ns_steps):
                gram = matmul(x, transpose(x))
                x = a * x + matmul(b * gram + c * matmul(gram, gram), x)
            result.append(transpose(x) if tall else x)
        return result
