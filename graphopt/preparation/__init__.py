"""Model preparation: the edits that turn an inference model into one to differentiate and train.

    model = normalized(model)                           # functions inlined, pinned opset and IR version
    model = fold_constant_expressions(model)            # Concat of Constants -> Constant (shape inference)
    model = weights_as_initializers(model)              # statistics and filled weights -> initializers
    model = untie_running_statistics(model)             # running stats an exporter merged with weights: parted
    chosen = select_trainable(model, trainable=["conv*"], frozen=["*.bias"])
    default = default_trainable(model, differentiable)  # the weights, not an exporter's constants
    model = promote_constants(model, ["W_const"])       # Constant / ConstantOfShape -> initializer
    model, buffers = to_training_mode(model)            # BatchNormalization and Dropout in training mode
    model = sequences_to_split(model)                   # SplitToSequence + SequenceAt -> Split
    model = to_inference_mode(exported)                 # a training-mode export in inference mode
    model = loaded("net.onnx", "Trainer")               # external data from the file's folder only
    model = infer_shapes(model)                         # without serializing the weights

`buffers` maps each running statistic of a BatchNormalization (an initializer) to the
output ``<name>.new`` that carries its value after a step, as torch updates
``running_mean`` and ``running_var`` in ``train()`` mode (the running variance with the
unbiased batch variance, as torch, not ONNX's biased one). One module per concern:
`loading`, `normalize`, `constants`, `trainables`, `modes`, `sequences`, `shapes`. The autodiff and the trainer
both use them.
"""

from graphopt.preparation.constants import (
    implicit_initializers,
    promote_constants,
    untie_running_statistics,
    weights_as_initializers,
)
from graphopt.preparation.loading import external_tensors, loaded
from graphopt.preparation.modes import to_inference_mode, to_training_mode
from graphopt.preparation.normalize import fold_constant_expressions, inline_functions, normalized
from graphopt.preparation.sequences import sequences_to_split
from graphopt.preparation.shapes import infer_shapes
from graphopt.preparation.trainables import (
    PARAMETERS,
    Selector,
    default_trainable,
    exporter_constants,
    float_initializers,
    matching,
    recorded_parameters,
    running_statistics,
    select_trainable,
)

__all__ = [
    "PARAMETERS", "Selector", "default_trainable", "exporter_constants", "external_tensors", "float_initializers",
    "fold_constant_expressions", "implicit_initializers", "infer_shapes", "inline_functions", "loaded", "matching",
    "normalized", "promote_constants", "recorded_parameters", "running_statistics", "select_trainable",
    "sequences_to_split", "to_inference_mode", "to_training_mode", "untie_running_statistics",
    "weights_as_initializers",
]
