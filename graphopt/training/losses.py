"""Built-in losses, appended to a model's output to give the scalar a `Trainer` minimizes.

    trainer = Trainer(model, loss=losses.cross_entropy("logits"), optimizer=optim.Adam(lr=1e-3))
    trainer.step({"x": images}, labels=digits)

Each loss adds a graph input ``labels`` (the name can be changed) and a scalar output
``loss``, the mean over every element (every sample, for cross-entropy):

* ``cross_entropy``: ``-log softmax(y)[label]`` over the class axis 1, labels int64 of y's
  shape without that axis (as ``torch.nn.functional.cross_entropy``). As in torch, a label
  equal to ``ignore_index`` (default -100) is skipped: it contributes neither loss nor
  gradient, and the mean is over the other labels only (NaN if every label is ignored, as
  torch). Any other label outside ``[0, C)`` makes `Trainer.step` / ``accumulate`` raise
  before anything runs, naming the input, the value and the class count C;
* ``mse``: ``(y - t) ** 2``; ``l1``: ``|y - t|``;
* ``bce_with_logits``: ``-t * log sigmoid(y) - (1 - t) * log sigmoid(-y)``, computed as a
  two-class log-softmax of ``[0, y]`` so that it stays finite and exact for any ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.preparation import infer_shapes

LOSS = "loss"


@dataclass(frozen=True)
class Loss:
    """A loss of the model output ``output`` (default: its first) against the input ``labels``."""

    kind: str
    output: str | None = None
    labels: str = "labels"
    ignore_index: int | None = None  # cross_entropy: the label value that is skipped

    def attach(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
        """``model`` with the labels input and the scalar loss output; the loss's name."""
        result = onnx.ModelProto()
        result.CopyFrom(model)
        graph = result.graph
        inferred = infer_shapes(model).graph
        outputs = {o.name: o for o in inferred.output}
        output = self.output or graph.output[0].name
        if output not in outputs:
            raise ValueError(f"{self.kind}: {output!r} is not an output of the model "
                             f"(outputs: {list(outputs)})")
        taken = {v.name for v in graph.input} | {t.name for t in graph.initializer}
        taken |= {o for n in graph.node for o in n.output}
        if self.labels in taken or LOSS in taken:
            raise ValueError(f"{self.kind}: the model already has a value named {self.labels!r} or {LOSS!r}; "
                             f"pass labels=... with another name")
        tensor_type = outputs[output].type.tensor_type
        dims = [d.dim_param or d.dim_value or None for d in tensor_type.shape.dim] \
            if tensor_type.HasField("shape") else None
        if self.kind == "cross_entropy":
            label_type, label_dims = TensorProto.INT64, None if dims is None else dims[:1] + dims[2:]
        else:
            label_type, label_dims = tensor_type.elem_type, dims
        graph.input.append(helper.make_tensor_value_info(self.labels, label_type, label_dims))
        next(o for o in graph.output if o.name == output).CopyFrom(outputs[output])  # typed: `classes` reads it
        nodes, constants = _NODES[self.kind](output, self.labels, f"{LOSS}/", tensor_type.elem_type)
        if self.ignore_index is not None:
            nodes[0].attribute.append(helper.make_attribute("ignore_index", int(self.ignore_index)))
        graph.node.extend(nodes)
        graph.initializer.extend(constants)
        graph.output.append(helper.make_tensor_value_info(LOSS, tensor_type.elem_type, []))
        return result, LOSS

    def classes(self, model: onnx.ModelProto) -> int | None:
        """Cross-entropy: the class count C, dimension 1 of the output in ``model`` as `attach`
        returned it (the output typed by shape inference there), or None where it is not static."""
        output = self.output or model.graph.output[0].name
        info = next((o for o in model.graph.output if o.name == output), None)
        dims = info.type.tensor_type.shape.dim if info is not None else ()
        return dims[1].dim_value or None if len(dims) > 1 else None

    def check_labels(self, labels: np.ndarray, classes: int | None, where: str) -> None:
        """Raise, naming the input, if a cross-entropy label is outside ``[0, classes)`` and is not
        ``ignore_index`` (``classes`` None: only negative labels are checked)."""
        if self.kind != "cross_entropy" or labels.size == 0:
            return
        bad = (labels < 0) | (labels >= classes) if classes is not None else labels < 0
        if self.ignore_index is not None:
            bad &= labels != self.ignore_index
        if bad.any():
            value = labels[bad].flat[0]
            allowed = f"outside [0, {classes}) for the {classes} classes" if classes is not None else \
                "negative, and the classes are numbered from 0"
            raise ValueError(f"{where}: label input {self.labels!r} holds {value}, {allowed} of cross_entropy"
                             f"({self.output or 'the first output'!r}); ignore_index={self.ignore_index} is the "
                             "only other value allowed")


def cross_entropy(output: str | None = None, labels: str = "labels", ignore_index: int = -100) -> Loss:
    """Mean cross-entropy over the labels not equal to ``ignore_index`` (torch's semantics)."""
    return Loss("cross_entropy", output, labels, int(ignore_index))


def mse(output: str | None = None, labels: str = "labels") -> Loss:
    return Loss("mse", output, labels)


def l1(output: str | None = None, labels: str = "labels") -> Loss:
    return Loss("l1", output, labels)


def bce_with_logits(output: str | None = None, labels: str = "labels") -> Loss:
    return Loss("bce_with_logits", output, labels)


def _cross_entropy(y, t, p, elem):
    return [helper.make_node("SoftmaxCrossEntropyLoss", [y, t], [LOSS], reduction="mean")], []


def _mean_of(op: str):
    def build(y, t, p, elem):
        nodes = [helper.make_node("Sub", [y, t], [p + "difference"])]
        if op == "Abs":
            nodes.append(helper.make_node("Abs", [p + "difference"], [p + "elementwise"]))
        else:
            nodes.append(helper.make_node("Mul", [p + "difference", p + "difference"], [p + "elementwise"]))
        nodes.append(helper.make_node("ReduceMean", [p + "elementwise"], [LOSS], keepdims=0))
        return nodes, []
    return build


def _bce_with_logits(y, t, p, elem):
    one = numpy_helper.from_array(np.array(1, helper.tensor_dtype_to_np_dtype(elem)), p + "one")
    last = numpy_helper.from_array(np.array([-1], np.int64), p + "last")
    nodes = [
        helper.make_node("Unsqueeze", [y, last.name], [p + "logit"]),
        helper.make_node("Sub", [p + "logit", p + "logit"], [p + "zero"]),  # zeros of the logit's shape
        helper.make_node("Concat", [p + "zero", p + "logit"], [p + "pair"], axis=-1),
        helper.make_node("LogSoftmax", [p + "pair"], [p + "log_sigmoids"], axis=-1),  # [log s(-y), log s(y)]
        helper.make_node("Unsqueeze", [t, last.name], [p + "target"]),
        helper.make_node("Sub", [one.name, p + "target"], [p + "other"]),
        helper.make_node("Concat", [p + "other", p + "target"], [p + "weights"], axis=-1),
        helper.make_node("Mul", [p + "log_sigmoids", p + "weights"], [p + "weighted"]),
        helper.make_node("ReduceSum", [p + "weighted", last.name], [p + "log_likelihood"], keepdims=0),
        helper.make_node("ReduceMean", [p + "log_likelihood"], [p + "mean"], keepdims=0),
        helper.make_node("Neg", [p + "mean"], [LOSS]),
    ]
    return nodes, [one, last]


_NODES = {"cross_entropy": _cross_entropy, "mse": _mean_of("Mul"), "l1": _mean_of("Abs"),
          "bce_with_logits": _bce_with_logits}
