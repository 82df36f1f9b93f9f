"""The model zoo's harness: a torch module, exported to ONNX, trained by graphopt's `Trainer`
and by ``torch.optim`` side by side, step for step: the losses, the parameters and the
running statistics (BatchNorm's, updated in ``train()`` mode) agree.

torch itself runs the module twice, in float32 and in float64. graphopt (float32) must
agree with torch's float64 run to a relative 1e-5 (of ``|ref64| + rms(ref64)``, the
element's magnitude or the tensor's, plus 1e-6) wherever torch's own float32 run does. Elements
that float32 cannot resolve -- torch32 itself further from float64 than that, as for
a bias whose exact gradient is zero (a bias before a BatchNormalization) and whose
Adam step is rounding noise divided by its own square root -- are not judged. Every
trainable torch parameter must be trained.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import graphopt
from graphopt import losses, optim
from tools.zoo import Case, export, nn

RTOL = 1e-5
ATOL = 1e-6  # for weights near zero: 1e-5 of a typical weight (0.1); above the noise floor (see OPTIMIZERS)


# AdamW's eps is 1e-4, not 1e-8: a weight whose exact gradient is zero (a bias before a
# normalization, an attention's key bias) gets float32 rounding noise of ~1e-9 as gradient,
# which eps=1e-8 would turn into steps of up to lr, different in every implementation.
OPTIMIZERS = {
    "sgd_momentum": (lambda: optim.SGD(lr=0.05, momentum=0.9),
                     lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)),
    "adamw": (lambda: optim.AdamW(lr=1e-3, eps=1e-4, weight_decay=0.01),
              lambda params: torch.optim.AdamW(params, lr=1e-3, eps=1e-4, weight_decay=0.01)),
}


def _torch_loss(kind: str, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if kind == "cross_entropy":
        return torch.nn.functional.cross_entropy(output, labels)
    return torch.nn.functional.mse_loss(output, labels)


def _torch_step(net, opt, inputs, labels, kind, dtype) -> float:
    args = [torch.from_numpy(v).to(dtype) if v.dtype.kind == "f" else torch.from_numpy(v) for v in inputs.values()]
    target = torch.from_numpy(labels)
    target = target.to(dtype) if target.is_floating_point() else target
    opt.zero_grad()
    loss = _torch_loss(kind, net(*args), target)
    loss.backward()
    opt.step()
    return loss.item()


def _assert_close(actual, ref32, ref64, what: str) -> None:
    actual, ref32, ref64 = (np.asarray(a, np.float64) for a in (actual, ref32, ref64))
    tolerance = RTOL * (np.abs(ref64) + np.sqrt(np.mean(ref64 ** 2))) + ATOL
    resolved = np.abs(ref32 - ref64) <= tolerance
    error = np.where(resolved, np.abs(actual - ref64), 0.0)
    assert np.all(np.isfinite(actual)), f"{what}: not finite"
    worst = np.unravel_index(np.argmax(error - tolerance), error.shape) if error.ndim else ()
    assert np.all(error <= tolerance), (f"{what}: |graphopt - torch64| = {error[worst]:.3g} > {tolerance[worst]:.3g} "
                                        f"at {worst} (graphopt {actual[worst]:.8g}, torch32 {ref32[worst]:.8g}, "
                                        f"torch64 {ref64[worst]:.8g})")


def train_against_torch(case: Case, optimizer: str, steps: int = 5, seed: int = 0) -> None:
    """``steps`` steps of ``case`` with ``optimizer`` in graphopt and torch (float32 and float64);
    every loss and, at the end, every parameter agree (see the module docstring)."""
    torch.manual_seed(seed)
    net32 = case.build()
    rng = np.random.default_rng(seed)
    batches = [case.batch(rng) for _ in range(steps)]
    model = export(net32, batches[0][0])  # from_torch leaves the module and its running statistics as they were
    net64 = copy.deepcopy(net32).double()
    make_ours, make_torch = OPTIMIZERS[optimizer]
    loss = losses.cross_entropy("output") if case.loss == "cross_entropy" else losses.mse("output")
    trainer = graphopt.Trainer(model, loss, make_ours())
    expected = {name for name, p in net32.named_parameters() if p.requires_grad}
    assert set(trainer.parameters) == expected, f"{case.name}: trained {sorted(trainer.parameters)}, " \
                                                f"torch's parameters are {sorted(expected)}"
    opt32, opt64 = make_torch(net32.parameters()), make_torch(net64.parameters())
    for step, (inputs, labels) in enumerate(batches):
        ours = trainer.step(inputs, labels=labels)
        loss32 = _torch_step(net32, opt32, inputs, labels, case.loss, torch.float32)
        loss64 = _torch_step(net64, opt64, inputs, labels, case.loss, torch.float64)
        _assert_close(ours, loss32, loss64, f"{case.name}/{optimizer}: loss of step {step}")
    params32, params64 = dict(net32.named_parameters()), dict(net64.named_parameters())
    for name, p in trainer.parameters.items():
        _assert_close(p.data, params32[name].detach().numpy(), params64[name].detach().numpy(),
                      f"{case.name}/{optimizer}: parameter {name!r} after {steps} steps")
    buffers32, buffers64 = dict(net32.named_buffers()), dict(net64.named_buffers())
    batch_norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net32.modules())
    assert len(trainer.buffers) == 2 * batch_norms, f"{case.name}: buffers {sorted(trainer.buffers)}"
    for name, value in trainer.buffers.items():
        _assert_close(value, buffers32[name].numpy(), buffers64[name].numpy(),
                      f"{case.name}/{optimizer}: running statistic {name!r} after {steps} steps")
