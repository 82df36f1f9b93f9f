"""Optimizers with torch.optim's interface, each a chain of update transforms."""

from graphopt.optim import functional, lr_scheduler, schedules, swa_utils
from graphopt.optim.adam import Adam, AdamW
from graphopt.optim.optimizer import Optimizer, required
from graphopt.optim.rmsprop import RMSprop
from graphopt.optim.sgd import SGD
from graphopt.transforms.averaging import EMA, SWA

__all__ = ["EMA", "SWA", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "functional", "lr_scheduler", "required",
           "schedules", "swa_utils"]
