"""Every optimizer of `graphopt.optim` with every option that changes its chunked update's structure,
for the fused-kernel tests (`tests/test_fused.py`): ``(id, kind, settings, averaging, schedule)``."""

from __future__ import annotations

from graphopt import optim
from graphopt.optim import schedules as S

GRADIENT_OPTIONS = [
    dict(),
    dict(scale=2.0, clip_norm=1.5, maximize=True),
    dict(clip_value=0.4, clip_norm=0.8),
]

SETTINGS = {
    "SGD": [dict(lr=0.1), dict(lr=0.1, momentum=0.9, dampening=0.3), dict(lr=0.05, momentum=0.9, nesterov=True),
            dict(lr=0.1, momentum=0.5, weight_decay=0.05)],
    "Adam": [dict(), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, amsgrad=True)],
    "AdamW": [dict(), dict(lr=0.01, amsgrad=True, weight_decay=0.1)],
    "RMSprop": [dict(), dict(lr=0.01, centered=True), dict(lr=0.01, momentum=0.9),
                dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1)],
    "Adagrad": [dict(), dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, initial_accumulator_value=0.1)],
    "Adadelta": [dict(), dict(rho=0.95, weight_decay=0.9)],
    "Adamax": [dict(), dict(lr=0.1, weight_decay=0.1)],
    "RAdam": [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True)],
    "NAdam": [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True),
              dict(betas=(0.0, 0.99))],
    "ASGD": [dict(), dict(t0=4, lambd=0.05, alpha=0.5, weight_decay=0.05)],
    "Rprop": [dict(), dict(etas=(0.5, 1.5), step_sizes=(2e-6, 100))],
    "Lion": [dict(), dict(lr=0.01, betas=(0.95, 0.98), weight_decay=0.5)],
    "Signum": [dict(), dict(lr=0.01, momentum=0.0), dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)],
    "SparseAdam": [dict()],
}

NOT_CHUNKABLE = {  # their chunked update does not exist (`NotChunkable`), so there is nothing to fuse
    "Adafactor": dict(),  # factored second moments: slots not shaped like the parameter
    "LAMB": dict(),  # per-tensor trust ratio
    "LARS": dict(lr=0.1, momentum=0.9),  # per-tensor trust ratio
    "SGD": dict(lr=0.1, clip_norm=0.5, clip_per_tensor=True),  # per-tensor norm
}

EXTRAS = {  # (averaging, schedule) variations, applied to a few optimizers
    "ema": (lambda: optim.EMA(decay=0.99, start=2, every=2, warmup=True), None),
    "swa": (lambda: optim.SWA(start=1), None),
    "cosine": (None, lambda: S.Cosine(100, 0.001)),
    "onecycle": (None, lambda: S.OneCycle(0.5, 50, anneal_strategy="linear", three_phase=True)),
    "cyclic_exp": (None, lambda: S.Cyclic(0.01, 0.1, 15, mode="exp_range", gamma=0.995)),
    "warmup_cosine": (None, lambda: S.Sequential([S.Linear(0.1, 1.0, 20), S.Cosine(280, 0.0)], milestones=[20])),
}
EXTRA_KINDS = ("SGD", "Adam", "NAdam")


def _id(kind, settings, extra=""):
    text = "-".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    return f"{kind}-{text}{'-' + extra if extra else ''}"


def cases():
    result = []
    for kind, configs in SETTINGS.items():
        for config in configs:
            for options in GRADIENT_OPTIONS:
                settings = {**config, **options}
                result.append((_id(kind, settings), kind, settings, None, None))
    for kind in EXTRA_KINDS:
        for extra, (averaging, schedule) in EXTRAS.items():
            config = SETTINGS[kind][-1]
            result.append((_id(kind, config, extra), kind, config, averaging, schedule))
    return result
