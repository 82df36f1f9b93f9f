"""Training ONNX models: `Trainer` (forward, backward and update in one ONNX Runtime call), the
training-step model it runs (`step`), the ONNX-standard ``TrainingInfoProto`` form and
`TrainingSession`, which runs it (`info`), the built-in `losses`, and `GradScaler` (dynamic loss
scaling inside the training step)."""

from graphopt.training import losses
from graphopt.training.grad_scaler import GradScaler
from graphopt.training.info import TrainingSession, with_training_info
from graphopt.training.step import build_gradients, build_training_step, trainable_as_inputs
from graphopt.training.trainer import Trainer

__all__ = ["GradScaler", "Trainer", "TrainingSession", "build_gradients", "build_training_step", "losses",
           "trainable_as_inputs", "with_training_info"]
