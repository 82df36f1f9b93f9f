"""ONNX's ``ai.onnx.preview.training`` operators lowered to standard ``ai.onnx`` ones.

    model = graphopt.lower_preview_training(onnx.load("adam_step.onnx"))
    onnxruntime.InferenceSession(model.SerializeToString())      # plain onnxruntime runs it

One module per operator (`adagrad`, `momentum`, `adam`, `gradient`), each with the spec's formula
in its docstring; `signature` checks a node's variadic inputs and attributes against ONNX's
schema; `lowering` walks the model.
"""

from graphopt.preview_training.errors import PreviewTrainingError
from graphopt.preview_training.lowering import lower_preview_training

__all__ = ["PreviewTrainingError", "lower_preview_training"]
