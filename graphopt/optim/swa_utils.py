"""``graphopt.optim.swa_utils``: torch.optim.swa_utils' `SWALR` (the lr part of stochastic weight averaging)."""

from graphopt.optim.schedulers.swa import SWALR

__all__ = ["SWALR"]
