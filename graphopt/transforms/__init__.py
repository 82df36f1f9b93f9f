"""Update transforms: the building blocks optimizers are chained from.

Each is a frozen dataclass with state ``slots`` (initialised by ``init``) and an
``apply`` that emits the update rule as symbolic ONNX ops; `chain` composes them.
"""

from graphopt.transforms.adadelta import ScaleByAdadelta
from graphopt.transforms.adafactor import ScaleByAdafactor
from graphopt.transforms.adagrad import ScaleByAdagrad
from graphopt.transforms.adam import ScaleByAdam
from graphopt.transforms.adamax import ScaleByAdamax
from graphopt.transforms.asgd import AveragedSgd
from graphopt.transforms.base import Chain, Context, Transform, chain
from graphopt.transforms.clip import ClipByNorm, ClipByValue
from graphopt.transforms.heavy_ball import HeavyBall
from graphopt.transforms.learning_rate import ScaleByLearningRate, effective_lr, effective_weight_decay
from graphopt.transforms.lion import ScaleByLion
from graphopt.transforms.momentum import Momentum
from graphopt.transforms.muon import MuonMomentum, ScaleByAdjustedLearningRate
from graphopt.transforms.nadam import ScaleByNadam
from graphopt.transforms.newton_schulz import Orthogonalize
from graphopt.transforms.radam import ScaleByRAdam
from graphopt.transforms.rmsprop import ScaleByRms
from graphopt.transforms.rprop import RpropStep
from graphopt.transforms.scale import Maximize, Scale
from graphopt.transforms.signum import ScaleBySignum
from graphopt.transforms.sparse_adam import ScaleBySparseAdam
from graphopt.transforms.trust_ratio import ScaleByLarsTrustRatio, ScaleByTrustRatio
from graphopt.transforms.weight_decay import AddWeightDecay, DecoupledWeightDecay

__all__ = [
    "AddWeightDecay", "AveragedSgd", "Chain", "ClipByNorm", "ClipByValue", "Context", "DecoupledWeightDecay",
    "HeavyBall", "Maximize", "Momentum", "MuonMomentum", "Orthogonalize", "RpropStep", "Scale", "ScaleByAdadelta",
    "ScaleByAdafactor", "ScaleByAdagrad", "ScaleByAdam", "ScaleByAdamax", "ScaleByAdjustedLearningRate",
    "ScaleByLarsTrustRatio", "ScaleByLearningRate", "ScaleByLion", "ScaleByNadam", "ScaleByRAdam", "ScaleByRms",
    "ScaleBySignum", "ScaleBySparseAdam", "ScaleByTrustRatio", "Transform", "chain", "effective_lr",
    "effective_weight_decay",
]
