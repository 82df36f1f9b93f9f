"""Optimizers with torch.optim's interface, each a chain of update transforms."""

from graphopt.optim import functional
from graphopt.optim.adafactor import Adafactor
from graphopt.optim.adam import Adam, AdamW
from graphopt.optim.asgd import ASGD
from graphopt.optim.nadam import NAdam
from graphopt.optim.optimizer import Optimizer, required
from graphopt.optim.rmsprop import RMSprop
from graphopt.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "functional", "required",
           "ASGD", "Adafactor", "NAdam"]
