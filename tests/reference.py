"""Plain numpy reference optimizers, written from the published formulas.

These follow torch.optim's documented algorithms (and the seeds' ``scale``,
``clip_norm``, ``lr_mult`` and ``decay_mult``) line by line, with no graphopt code,
so that graphopt's compiled updates can be checked against them.
"""

from __future__ import annotations

import math

import numpy as np


def preprocess(grads, group):
    """scale -> clip by value -> clip by L2 norm (group or per tensor) -> maximize."""
    grads = [g * group.get("scale", 1) for g in grads]
    if group.get("clip_value", 0):
        c = group["clip_value"]
        grads = [np.clip(g, -c, c) for g in grads]
    if group.get("clip_norm", 0):
        c = group["clip_norm"]
        if group.get("clip_per_tensor", False):
            grads = [g * (c / max(math.sqrt(float(np.sum(g * g))), c)) for g in grads]
        else:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
            grads = [g * (c / max(norm, c)) for g in grads]
    if group.get("maximize", False):
        grads = [-g for g in grads]
    return grads


def lr_of(group):
    return group["lr"] * group.get("lr_mult", 1)


def wd_of(group):
    return group["weight_decay"] * group.get("decay_mult", 1)


def sgd(p, g, state, group):
    t = state["step"] = state.get("step", 0) + 1
    g = g + wd_of(group) * p
    mu = group["momentum"]
    if mu:
        if t == 1:
            b = g.copy()
        else:
            b = mu * state["momentum_buffer"] + (1 - group["dampening"]) * g
        state["momentum_buffer"] = b
        g = g + mu * b if group["nesterov"] else b
    return p - lr_of(group) * g


def adam(p, g, state, group, decoupled=False):
    t = state["step"] = state.get("step", 0) + 1
    b1, b2 = group["betas"]
    if decoupled:
        p = p * (1 - lr_of(group) * wd_of(group))
    else:
        g = g + wd_of(group) * p
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * p) + (1 - b1) * g
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * p) + (1 - b2) * g * g
    if group["amsgrad"]:
        v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", 0 * p), v)
    step_size = lr_of(group) / (1 - b1 ** t)
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + group["eps"]
    return p - step_size * m / denom


def adamw(p, g, state, group):
    return adam(p, g, state, group, decoupled=True)


def rmsprop(p, g, state, group):
    state["step"] = state.get("step", 0) + 1
    alpha = group["alpha"]
    g = g + wd_of(group) * p
    s = state["square_avg"] = alpha * state.get("square_avg", 0 * p) + (1 - alpha) * g * g
    if group["centered"]:
        a = state["grad_avg"] = alpha * state.get("grad_avg", 0 * p) + (1 - alpha) * g
        s = s - a * a
    d = np.sqrt(s) + group["eps"]
    if group["momentum"]:
        b = state["momentum_buffer"] = group["momentum"] * state.get("momentum_buffer", 0 * p) + g / d
        return p - lr_of(group) * b
    return p - lr_of(group) * g / d


UPDATES = {"SGD": sgd, "Adam": adam, "AdamW": adamw, "RMSprop": rmsprop}


class ReferenceOptimizer:
    """Runs a reference update over param groups of plain arrays, skipping None grads."""

    def __init__(self, kind, groups):
        self.update = UPDATES[kind]
        self.groups = groups  # list of dicts: settings + "params": list of arrays
        self.state = [[{} for _ in g["params"]] for g in groups]

    def step(self, grads):
        """``grads``: per group, a list with an array or None per parameter."""
        for group, group_grads, states in zip(self.groups, grads, self.state):
            active = [i for i, g in enumerate(group_grads) if g is not None]
            processed = preprocess([group_grads[i] for i in active], group)
            for i, g in zip(active, processed):
                group["params"][i] = self.update(group["params"][i], g, states[i], group)


def nadam(p, g, state, group):
    t = state["step"] = state.get("step", 0) + 1
    b1, b2 = group["betas"]
    if group["decoupled_weight_decay"]:
        p = p * (1 - lr_of(group) * wd_of(group))
    else:
        g = g + wd_of(group) * p
    mu = b1 * (1 - 0.5 * 0.96 ** (t * group["momentum_decay"]))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * group["momentum_decay"]))
    product = state["mu_product"] = state.get("mu_product", 1.0) * mu
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * p) + (1 - b1) * g
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * p) + (1 - b2) * g * g
    denom = np.sqrt(v / (1 - b2 ** t)) + group["eps"]
    lr = lr_of(group)
    return p - lr * (1 - mu) / (1 - product) * g / denom - lr * mu_next / (1 - product * mu_next) * m / denom


def asgd(p, g, state, group):
    t = state["step"] = state.get("step", 0) + 1
    lr = lr_of(group)
    g = g + wd_of(group) * p
    eta, mu = state.get("eta", lr), state.get("mu", 1.0)  # before the first step: lr and 1
    p = p * (1 - group["lambd"] * eta) - eta * g
    state["ax"] = p.copy() if mu == 1 else state["ax"] + (p - state["ax"]) * mu
    state["eta"] = lr / (1 + group["lambd"] * lr * t) ** group["alpha"]
    state["mu"] = 1 / max(1, t - group["t0"])
    return p


def adafactor(p, g, state, group):
    t = state["step"] = state.get("step", 0) + 1
    eps1, eps2 = group["eps"]
    eps1 = np.finfo(p.dtype).eps if eps1 is None else eps1
    lr, n = lr_of(group), max(p.size, 1)
    alpha = max(eps2, math.sqrt(float(np.sum(p * p)) / n)) * min(lr, 1 / math.sqrt(t))
    p = p * (1 - lr * wd_of(group))
    w = t ** group["beta2_decay"]
    if g.ndim >= 2:
        r = state.get("row_var", np.zeros(g.shape[:-1] + (1,)))
        c = state.get("col_var", np.zeros(g.shape[:-2] + (1,) + g.shape[-1:]))
        r = state["row_var"] = r + w * (np.mean(g * g, axis=-1, keepdims=True) - r)
        c = state["col_var"] = c + w * (np.mean(g * g, axis=-2, keepdims=True) - c)
        v = (r @ c) / np.maximum(np.mean(r, axis=-2, keepdims=True), eps1)
    else:
        v = state.get("variance", 0 * g)
        v = state["variance"] = v + w * (g * g - v)
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    return p - alpha / max(1, math.sqrt(float(np.sum(u * u)) / n) / group["d"]) * u


UPDATES.update({"NAdam": nadam, "ASGD": asgd, "Adafactor": adafactor})
