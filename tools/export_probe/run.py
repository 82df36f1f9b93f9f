"""The probe: each architecture (tools/export_probe/models.py) x export setting x optimizer, 5 steps of
graphopt's Trainer against torch (tests/against_torch.py's judgement: torch float64 is the
reference, relative 1e-5 of ``|ref64| + rms(ref64)`` where torch float32 resolves it).

    python -m tools.export_probe.run [--cases a,b] [--settings a,b] > tools/export_probe/results.jsonl

Settings: ``a`` TorchScript, training mode, no folding (the zoo's); ``b`` as a with folding;
``c`` TorchScript eval-mode default export; ``d0`` dynamo, optimize=False; ``d1`` dynamo default.
Each line of output: case, setting, optimizer, verdict (exact / drift / error), worst ratio of
error to tolerance, the first line of the error, notes.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import traceback
import warnings

import numpy as np
import onnx
import torch

import graphopt
from graphopt import losses
from tools.export_probe.models import CASES
from tests.against_torch import ATOL, OPTIMIZERS, RTOL

STEPS = 5
SETTINGS = ("a", "b", "c", "d0", "d1")


def export(module, inputs, setting, dynamic, output="output"):
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    names = list(inputs)
    axes = {n: {0: "batch"} for n in names} | {output: {0: "batch"}} if dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if setting in ("a", "b"):
            torch.onnx.export(module.train(), args, buffer, dynamo=False, input_names=names, output_names=[output],
                              opset_version=17, do_constant_folding=setting == "b",
                              training=torch.onnx.TrainingMode.TRAINING, dynamic_axes=axes)
        elif setting == "c":
            torch.onnx.export(module.train(), args, buffer, dynamo=False, input_names=names, output_names=[output],
                              dynamic_axes=axes)
        else:
            program = torch.onnx.export(module.train(), args, dynamo=True, input_names=names, output_names=[output],
                                        optimize=setting == "d1", dynamic_axes=axes, verbose=False)
            return program.model_proto
    return onnx.load_from_string(buffer.getvalue())


def torch_loss(kind, out, target):
    if kind == "cross_entropy":
        return torch.nn.functional.cross_entropy(out, target)
    if kind == "nll":
        return torch.nn.functional.nll_loss(out, target)
    if kind == "self":
        return out
    return torch.nn.functional.mse_loss(out, target)


def torch_step(net, opt, inputs, labels, kind, dtype):
    args = [torch.from_numpy(v).to(dtype) if v.dtype.kind == "f" else torch.from_numpy(v) for v in inputs.values()]
    opt.zero_grad()
    target = None if labels is None else torch.from_numpy(labels)
    if target is not None and target.is_floating_point():
        target = target.to(dtype)
    loss = torch_loss(kind, net(*args), target)
    loss.backward()
    opt.step()
    return loss.item()


def ratio(actual, ref32, ref64):
    """max over elements of |ours - ref64| / tolerance where torch32 resolves (1 = at tolerance)."""
    actual, ref32, ref64 = (np.asarray(a, np.float64) for a in (actual, ref32, ref64))
    if not np.all(np.isfinite(actual)):
        return float("inf")
    tolerance = RTOL * (np.abs(ref64) + np.sqrt(np.mean(ref64 ** 2))) + ATOL
    resolved = np.abs(ref32 - ref64) <= tolerance
    return float(np.max(np.where(resolved, np.abs(actual - ref64) / tolerance, 0.0), initial=0.0))


def batches(case, rng):
    sizes = [case.size] * (STEPS + 1)
    if case.dynamic:
        sizes = [case.size, 6, 3, 5, 6, 2]  # the first is the exported batch
    out = [case.batch(rng, s) for s in sizes]
    if case.dtype == np.float64:
        out = [({k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in i.items()},
                lab if lab is None or lab.dtype.kind != "f" else lab.astype(np.float64)) for i, lab in out]
    return out[0], out[1:]


_EXPORTS = {}


def run_one(case, setting, optimizer, seed=0):
    torch.manual_seed(seed)
    net32 = case.build()
    net64 = copy.deepcopy(net32).double()
    rng = np.random.default_rng(seed)
    (export_inputs, export_labels), steps = batches(case, rng)
    key = (case.name, setting)
    if key not in _EXPORTS:
        exported = copy.deepcopy(net64 if case.dtype == np.float64 else net32)
        _EXPORTS[key] = export(exported, export_inputs, setting, case.dynamic)
    model = _EXPORTS[key]
    notes = []
    wanted = [n for n, p in net32.named_parameters() if p.requires_grad]
    onnx_name, transposed = _match_parameters(model, net32 if case.dtype == np.float32 else net64, wanted, notes)
    if isinstance(onnx_name, str):
        return {"verdict": "error", "error": onnx_name, "notes": notes}
    _adopt_exported_buffers(model, net32, net64, notes)
    loss = "output" if case.loss == "self" else (
        losses.cross_entropy("output") if case.loss in ("cross_entropy", "nll") else losses.mse("output"))
    make_ours, make_torch = OPTIMIZERS[optimizer]
    default = graphopt.Trainer(model, loss, make_ours())
    ours_wanted = [onnx_name[n] for n in wanted]
    if set(default.parameters) != set(ours_wanted):
        notes.append(f"default trainables differ: extra {sorted(set(default.parameters) - set(ours_wanted))[:4]}, "
                     f"missing {sorted(set(ours_wanted) - set(default.parameters))[:4]}")
        trainer = graphopt.Trainer(model, loss, make_ours(), trainable=ours_wanted)
    else:
        trainer = default
    opt32 = make_torch([p for p in net32.parameters() if p.requires_grad])
    opt64 = make_torch([p for p in net64.parameters() if p.requires_grad])
    worst, where = 0.0, ""
    for step, (inputs, labels) in enumerate(steps):
        ours = trainer.step(inputs, labels=labels) if case.loss != "self" else trainer.step(inputs)
        l32 = torch_step(net32, opt32, inputs, labels, case.loss, torch.float32)
        l64 = torch_step(net64, opt64, inputs, labels, case.loss, torch.float64)
        r = ratio(ours, l32, l64)
        if r > worst:
            worst, where = r, f"loss step {step}: ours {ours:.8g} torch64 {l64:.8g}"
    p32, p64 = dict(net32.named_parameters()), dict(net64.named_parameters())
    for name in wanted:
        data = trainer.parameters[onnx_name[name]].data
        r = ratio(data.T if name in transposed else data, p32[name].detach().numpy(), p64[name].detach().numpy())
        if r > worst:
            worst, where = r, f"param {name}"
    b32, b64 = dict(net32.named_buffers()), dict(net64.named_buffers())
    for name, value in trainer.buffers.items():
        if name in b64:
            r = ratio(value, b32[name].numpy(), b64[name].numpy())
            if r > worst:
                worst, where = r, f"buffer {name}"
        else:
            notes.append(f"buffer {name} not a torch buffer")
    stats = [n for n in b64 if "running" in n]
    if stats and not trainer.buffers:
        notes.append(f"running statistics not updated ({len(stats)} torch buffers)")
    verdict = "exact" if worst <= 1.0 else "drift"
    return {"verdict": verdict, "ratio": worst, "where": where if verdict == "drift" else "", "notes": notes}


def _adopt_exported_buffers(model, net32, net64, notes):
    """The TorchScript exporter traces the module in train() mode by running it: BatchNorm's
    running statistics in the export are already one forward further than the module's. Start
    torch from the exported values, so that the comparison is of the training steps."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    b32, b64 = dict(net32.named_buffers()), dict(net64.named_buffers())
    advanced = 0
    for name, value in inits.items():
        if name in b32 and value.dtype.kind == "f" and not np.array_equal(value, b64[name].numpy().astype(value.dtype)):
            advanced += 1
            with torch.no_grad():
                b32[name].copy_(torch.from_numpy(value.astype(np.float32)))
                b64[name].copy_(torch.from_numpy(value.astype(np.float64)))
    if advanced:
        notes.append(f"the export holds {advanced} buffers one forward further than the module")


def _match_parameters(model, net, wanted, notes):
    """torch name -> initializer name (the same, or an initializer holding the same values,
    possibly transposed, as constant folding leaves them); a str: the error."""
    inits = {t.name: t for t in model.graph.initializer}
    params = dict(net.named_parameters())
    mapping, transposed, taken = {}, set(), set(wanted) & set(inits)
    for name in wanted:
        if name in inits:
            mapping[name] = name
            continue
        p = params[name].detach().numpy()
        for other, t in inits.items():
            if other in taken:
                continue
            a = onnx.numpy_helper.to_array(t)
            if a.shape == p.shape and np.array_equal(a, p):
                mapping[name] = other
            elif a.ndim == 2 and a.shape == p.T.shape and np.array_equal(a, p.T):
                mapping[name], _ = other, transposed.add(name)
            else:
                continue
            taken.add(other)
            notes.append(f"{name} is {other}{' (transposed)' if name in transposed else ''}")
            break
        else:
            return f"torch parameter {name} {tuple(p.shape)} not an initializer of the export (folded away)", None
    return mapping, transposed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    for case in cases:
        for setting in args.settings.split(","):
            for optimizer in args.optimizers.split(","):
                row = {"case": case.name, "setting": setting, "optimizer": optimizer}
                try:
                    row.update(run_one(case, setting, optimizer))
                except Exception as e:  # noqa: BLE001 -- the probe records every failure
                    tb = traceback.extract_tb(e.__traceback__)
                    frame = next((f for f in reversed(tb) if "graphopt" in f.filename or "torch" in f.filename),
                                 tb[-1])
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    row.update(verdict="error", error=f"{type(e).__name__}: {first}",
                               at=f"{frame.filename.split('/')[-1]}:{frame.lineno} {frame.name}")
                print(json.dumps(row), flush=True)
                sys.stderr.write(f"{row['case']} {setting} {optimizer} {row['verdict']}\n")


if __name__ == "__main__":
    main()
