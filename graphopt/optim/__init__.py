"""Optimizers with torch.optim's interface, each a chain of update transforms."""

from graphopt.optim import functional, lr_scheduler, swa_utils
from graphopt.optim.adam import Adam, AdamW
from graphopt.optim.optimizer import Optimizer, required
from graphopt.optim.rmsprop import RMSprop
from graphopt.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "functional", "lr_scheduler", "required", "swa_utils"]
