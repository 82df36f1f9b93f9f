"""Optimizers with torch.optim's interface, each a chain of update transforms; lr schedulers
(`lr_scheduler`, torch's, in Python) and schedules compiled into the update graphs (`schedules`)."""

from graphopt.optim import functional, lr_scheduler, schedules, swa_utils
from graphopt.optim.adadelta import Adadelta
from graphopt.optim.adafactor import Adafactor
from graphopt.optim.adagrad import Adagrad
from graphopt.optim.adam import Adam, AdamW
from graphopt.optim.adamax import Adamax
from graphopt.optim.asgd import ASGD
from graphopt.optim.lamb import LAMB
from graphopt.optim.lars import LARS
from graphopt.optim.lbfgs import LBFGS
from graphopt.optim.lion import Lion
from graphopt.optim.muon import Muon
from graphopt.optim.nadam import NAdam
from graphopt.optim.optimizer import Optimizer, required
from graphopt.optim.radam import RAdam
from graphopt.optim.rmsprop import RMSprop
from graphopt.optim.rprop import Rprop
from graphopt.optim.sgd import SGD
from graphopt.optim.signum import Signum
from graphopt.optim.sparse_adam import SparseAdam
from graphopt.transforms.averaging import EMA, SWA

__all__ = [
    "ASGD", "EMA", "LAMB", "LARS", "LBFGS", "SWA", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax",
    "Lion", "Muon", "NAdam", "Optimizer", "RAdam", "RMSprop", "Rprop", "SGD", "Signum", "SparseAdam", "functional",
    "lr_scheduler", "required", "schedules", "swa_utils",
]
