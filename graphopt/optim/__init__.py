"""Optimizers with torch.optim's interface, each a chain of update transforms."""

from graphopt.optim import functional
from graphopt.optim.adam import Adam, AdamW
from graphopt.optim.lamb import LAMB
from graphopt.optim.lars import LARS
from graphopt.optim.lbfgs import LBFGS
from graphopt.optim.muon import Muon
from graphopt.optim.optimizer import Optimizer, required
from graphopt.optim.rmsprop import RMSprop
from graphopt.optim.sgd import SGD
from graphopt.optim.sparse_adam import SparseAdam

__all__ = ["Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "functional", "required"]
__all__ += ["LAMB", "LARS", "LBFGS", "Muon", "SparseAdam"]
