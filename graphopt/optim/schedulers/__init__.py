"""Learning-rate schedulers with torch.optim.lr_scheduler's interface (see `base`)."""

from graphopt.optim.schedulers.base import EPOCH_DEPRECATION_WARNING, LRScheduler, NoClosedForm
from graphopt.optim.schedulers.closed_form import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from graphopt.optim.schedulers.composite import ChainedScheduler, SequentialLR
from graphopt.optim.schedulers.cyclic import CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR
from graphopt.optim.schedulers.lambdas import LambdaLR, MultiplicativeLR
from graphopt.optim.schedulers.plateau import ReduceLROnPlateau
from graphopt.optim.schedulers.swa import SWALR

__all__ = [
    "EPOCH_DEPRECATION_WARNING", "SWALR", "ChainedScheduler", "ConstantLR", "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts", "CyclicLR", "ExponentialLR", "LRScheduler", "LambdaLR", "LinearLR",
    "MultiStepLR", "MultiplicativeLR", "NoClosedForm", "OneCycleLR", "PolynomialLR", "ReduceLROnPlateau",
    "SequentialLR", "StepLR",
]
