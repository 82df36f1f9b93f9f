"""Train a small CNN on scikit-learn's 8x8 handwritten digits, entirely in ONNX Runtime.

The network is an ordinary ONNX inference model (Conv, BatchNormalization, Relu,
MaxPool, Dropout, Gemm) built here with onnx.helper. graphopt differentiates it,
appends AdamW's update and runs forward, backward and update as one ONNX Runtime
call per batch; BatchNormalization and Dropout run in training mode during steps.

    pip install -e '.[examples]'
    python examples/digits_cnn.py [--epochs 15] [--out digits_out]

Writes <out>/digits_cnn.onnx (the trained inference model), <out>/digits_training.onnx
(the same with its TrainingInfoProto) and <out>/digits_training.png (loss and accuracy).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim


def cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """[N, 1, 8, 8] -> conv 3x3 x16, BN, relu, pool -> conv 3x3 x32, relu, pool -> dropout -> 10 logits."""
    def he(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)

    weights = {"conv1.w": he(16, 1, 3, 3), "conv1.b": np.zeros(16, np.float32),
               "bn.scale": np.ones(16, np.float32), "bn.bias": np.zeros(16, np.float32),
               "bn.mean": np.zeros(16, np.float32), "bn.var": np.ones(16, np.float32),
               "conv2.w": he(32, 16, 3, 3), "conv2.b": np.zeros(32, np.float32),
               "fc.w": he(10, 128), "fc.b": np.zeros(10, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n1"],
                         momentum=0.9),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Dropout", ["f", "dropout.ratio"], ["d"], seed=int(rng.integers(1 << 30))),
        helper.make_node("Gemm", ["d", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    ratio = numpy_helper.from_array(np.array(0.25, np.float32), "dropout.ratio")
    graph = helper.make_graph(nodes, "digits_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()] + [ratio])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def digits(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return train_test_split(images, data.target.astype(np.int64), test_size=0.25, random_state=seed,
                            stratify=data.target)


def progress(epoch: int, epochs: int, done: int, total: int, loss: float, width: int = 30) -> None:
    """A progress bar on a terminal, redrawn in place; elsewhere only the finished bar."""
    if done < total and not sys.stderr.isatty():
        return
    filled = width * done // total
    sys.stderr.write(f"\repoch {epoch:2d}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                     f"{done:4d}/{total} loss {loss:.4f}")
    sys.stderr.flush()


def accuracy(trainer: graphopt.Trainer, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(trainer.evaluate({"x": x})["logits"].argmax(1) == y))


def train(epochs: int = 15, batch: int = 32, seed: int = 0, out: str | pathlib.Path = "digits_out") -> dict:
    rng = np.random.default_rng(seed)
    x_train, x_test, y_train, y_test = digits(seed)
    trainer = graphopt.Trainer(cnn(rng), loss=losses.cross_entropy("logits"),
                               optimizer=optim.AdamW(lr=3e-3, weight_decay=1e-4),
                               groups=[{"params": ["*.b", "bn.*"], "decay_mult": 0.0}])
    history = {"loss": [], "test_accuracy": []}
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        batch_losses = []
        for first in range(0, len(order), batch):
            rows = order[first:first + batch]
            batch_losses.append(trainer.step({"x": x_train[rows]}, labels=y_train[rows]))
            progress(epoch, epochs, min(first + batch, len(order)), len(order), float(np.mean(batch_losses)))
        history["loss"].append(float(np.mean(batch_losses)))
        history["test_accuracy"].append(accuracy(trainer, x_test, y_test))
        sys.stderr.write(f"  test accuracy {history['test_accuracy'][-1]:.2%}\n")
    seconds = time.perf_counter() - start
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer.export(out / "digits_cnn.onnx", kind="inference")
    trainer.export(out / "digits_training.onnx", kind="training_info")
    plot(history, out / "digits_training.png")
    print(f"trained {epochs} epochs of {len(x_train)} images in {seconds:.1f} s; "
          f"test accuracy {history['test_accuracy'][-1]:.2%} on {len(x_test)} held-out images")
    print(f"wrote {out / 'digits_cnn.onnx'}, {out / 'digits_training.onnx'} and {out / 'digits_training.png'}")
    return history


def plot(history: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, history["loss"], marker="o")
    left.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log")
    right.plot(epochs, [100 * a for a in history["test_accuracy"]], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="test accuracy (%)")
    fig.suptitle("graphopt: a CNN on the 8x8 digits, trained in ONNX Runtime")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def arguments(description: str) -> argparse.Namespace:
    """The digits examples' command line: ``--epochs``, ``--batch``, ``--seed``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="digits_out")
    return parser.parse_args()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    train(args.epochs, args.batch, args.seed, args.out)
