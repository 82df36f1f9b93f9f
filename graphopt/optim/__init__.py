"""Optimizers with torch.optim's interface, each a chain of update transforms."""

from graphopt.optim import functional, lr_scheduler, schedules, swa_utils
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
from graphopt.optim import functional, lr_scheduler, schedules, swa_utils
from graphopt.optim.adadelta import Adadelta
from graphopt.optim.adagrad import Adagrad
