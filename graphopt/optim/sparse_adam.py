"""SparseAdam: Adam that moves only the entries a (sparse) gradient has."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from graphopt.optim import validation
from graphopt.optim.optimizer import Optimizer, gradient_transforms, validate_gradient_settings
from graphopt.transforms import ScaleByLearningRate, ScaleBySparseAdam, Transform, chain


class SparseAdam(Optimizer):
    r"""torch.optim.SparseAdam's signature and formula, on dense gradients.

    graphopt's gradients are dense arrays, so an entry is *absent* when its gradient is exactly
    zero (after ``scale``, clipping and ``maximize``). torch's SparseAdam updates the moments and
    the parameter only at the entries its sparse gradient holds; its documentation defines that
    intent elementwise ("a mask of the non-zero values", the sparse layout being an
    implementation detail), and so does graphopt. This equals torch fed ``g.to_sparse()`` (the
    non-zero elements), and torch fed the non-zero rows (``nn.Embedding(sparse=True)``'s
    layout) whenever those rows have no exactly-zero element; for an Embedding row that is
    present but holds an exact zero, torch decays that element's moments and graphopt does not.

    Per tensor, ``t`` its step count (advanced on every step it has a gradient, even an
    all-zero one, as torch's), in the order applied (steps 1-4 as in `SGD`), at the elements
    where ``g != 0`` only (elsewhere ``m``, ``v`` and ``p`` are left exactly as they were):

    5. ``m <- m + (1 - beta1) * (g - m)``;  ``v <- v + (1 - beta2) * (g * g - v)``
    6. ``p <- p - (lr * lr_mult) * (sqrt(1 - beta2 ** t) / (1 - beta1 ** t)) * m / (sqrt(v) + eps)``

    Note ``eps`` sits inside the bias correction here, as in torch's SparseAdam (not as in Adam).
    State slots: ``exp_avg``, ``exp_avg_sq`` and ``step``. Path: chunked (every step is elementwise).

    Args:
        params: Parameters, or dicts defining param groups; None to add groups later.
        lr: learning rate, > 0.
        betas: averaging coefficients of the moments, each in [0, 1).
        eps: added to the denominator, > 0.
        maximize: maximize the objective instead of minimizing it.
        scale, clip_norm, clip_value, clip_per_tensor: as in `SGD`.
        options: ``providers``, ``runtime``, ``skip_nonfinite``, ``averaging``: see `Optimizer`.
    """

    _hyper_aliases = {"betas": ("beta1", "beta2")}

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, maximize: bool = False, *,
                 scale: float = 1, clip_norm: float = 0, clip_value: float = 0, clip_per_tensor: bool = False,
                 **options: Any):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, maximize=maximize, scale=scale, clip_norm=clip_norm,
                        clip_value=clip_value, clip_per_tensor=clip_per_tensor)
        super().__init__(params, defaults, **options)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        validate_gradient_settings(group, where)
        for key in ("lr", "eps"):
            if validation.as_float(where, key, group[key]) <= 0:
                raise ValueError(f"{where}: {key!r} must be > 0, got {group[key]!r}")
        validation.betas(where, group["betas"])

    def _transform(self, group: Mapping[str, Any]) -> Transform:
        return chain(*gradient_transforms(group), ScaleBySparseAdam(), ScaleByLearningRate())
