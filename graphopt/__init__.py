"""graphopt: optimizers compiled to standard ONNX update graphs, run by ONNX Runtime.

>>> import numpy as np, graphopt
>>> w = graphopt.Parameter(np.zeros(4, np.float32))
>>> opt = graphopt.optim.Adam([w], lr=1e-2)
>>> w.grad = np.ones(4, np.float32)
>>> opt.step()
>>> model = opt.export()        # the same update as a plain ONNX model
"""

from graphopt import names, optim, transforms
from graphopt.checkpoint import CheckpointError, load_state_dict, save_state_dict
from graphopt.parameter import Parameter
from graphopt.preview_training import PreviewTrainingError, lower_preview_training
from graphopt.symbolic import IR_VERSION, OPSET, GraphBuildError
from graphopt.torch_export import from_torch
from graphopt.training import GradScaler, Trainer, TrainingSession, losses

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "GradScaler", "GraphBuildError", "IR_VERSION", "OPSET", "Parameter", "PreviewTrainingError",
    "Trainer", "TrainingSession", "__version__", "from_torch", "load_state_dict", "losses", "lower_preview_training",
    "names", "optim", "save_state_dict", "transforms",
]
