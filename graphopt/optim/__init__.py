"""Optimizers with torch.optim's interface, each a chain of update transforms."""

from graphopt.optim import functional
from graphopt.optim.adadelta import Adadelta
from graphopt.optim.adagrad import Adagrad
from graphopt.optim.adam import Adam, AdamW
from graphopt.optim.adamax import Adamax
from graphopt.optim.lion import Lion
from graphopt.optim.optimizer import Optimizer, required
from graphopt.optim.radam import RAdam
from graphopt.optim.rmsprop import RMSprop
from graphopt.optim.rprop import Rprop
from graphopt.optim.sgd import SGD
from graphopt.optim.signum import Signum

__all__ = ["Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "functional", "required"]
__all__ += ["Adadelta", "Adagrad", "Adamax", "Lion", "RAdam", "Rprop", "Signum"]
