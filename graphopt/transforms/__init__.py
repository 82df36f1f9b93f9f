"""Update transforms: the building blocks optimizers are chained from.

Each is a frozen dataclass with state ``slots`` (initialised by ``init``) and an
``apply`` that emits the update rule as symbolic ONNX ops; `chain` composes them.
"""

from graphopt.transforms.adafactor import ScaleByAdafactor
from graphopt.transforms.adam import ScaleByAdam
from graphopt.transforms.asgd import AveragedSgd
from graphopt.transforms.base import Chain, Context, Transform, chain
from graphopt.transforms.clip import ClipByNorm, ClipByValue
from graphopt.transforms.learning_rate import ScaleByLearningRate, effective_lr, effective_weight_decay
from graphopt.transforms.momentum import Momentum
from graphopt.transforms.nadam import ScaleByNadam
from graphopt.transforms.rmsprop import ScaleByRms
from graphopt.transforms.scale import Maximize, Scale
from graphopt.transforms.weight_decay import AddWeightDecay, DecoupledWeightDecay

__all__ = [
    "AddWeightDecay", "Chain", "ClipByNorm", "ClipByValue", "Context", "DecoupledWeightDecay", "Maximize",
    "Momentum", "Scale", "ScaleByAdam", "ScaleByLearningRate", "ScaleByRms", "Transform", "chain",
    "effective_lr", "effective_weight_decay",
    "AveragedSgd", "ScaleByAdafactor", "ScaleByNadam",
]
