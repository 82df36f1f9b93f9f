"""L-BFGS: a closure-driven quasi-Newton method, torch.optim.LBFGS's algorithm in numpy."""

from __future__ import annotations

import copy
import numbers
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from graphopt.optim import validation
from graphopt.optim.line_search import strong_wolfe
from graphopt.optim.optimizer import Optimizer
from graphopt.optim.serial import serialized
from graphopt.parameter import Parameter

LINE_SEARCHES = (None, "strong_wolfe")
VECTORS = ("d", "prev_flat_grad")  # state entries that are flat vectors
HISTORY = ("old_dirs", "old_stps")  # state entries that are lists of flat vectors


class LBFGS(Optimizer):
    r"""L-BFGS (Nocedal, 1980; Liu & Nocedal, 1989), torch.optim.LBFGS's signature and numerics.

    ``step(closure)`` calls ``closure()``, which must set every parameter's ``grad`` (None counts
    as zeros) and return the loss, up to ``max_eval`` times. With ``x`` all parameters flattened
    into one vector, ``g`` its gradient, and ``k`` counting iterations over all steps, each of at
    most ``max_iter`` iterations does:

    1. stop if ``max |g| <= tolerance_grad``
    2. ``d <- -g`` on the very first iteration; else ``y <- g - g_prev``, ``s <- t * d``; if
       ``y . s > 1e-10``, push ``(y, s, 1 / (y . s))`` to a history of ``history_size`` (dropping the
       oldest) and set ``H <- (y . s) / (y . y)``; then ``d <- -H_k g`` by the two-loop recursion
       (``q <- -g``; newest to oldest ``a_i <- rho_i s_i . q``, ``q <- q - a_i y_i``; ``r <- H q``;
       oldest to newest ``r <- r + (a_i - rho_i y_i . r) s_i``; ``d <- r``)
    3. ``t <- min(1, 1 / sum |g|) * lr`` on the very first iteration, else ``t <- lr``; stop if
       ``g . d > -tolerance_change``
    4. with ``line_search_fn="strong_wolfe"``, ``t`` from torch's strong-Wolfe search along ``d``
       (`graphopt.optim.line_search`); then ``x <- x + t * d``
    5. stop after ``max_iter`` iterations, ``max_eval`` evaluations, when ``max |g| <= tolerance_grad``,
       ``max |t * d| <= tolerance_change`` or ``|loss - loss_prev| < tolerance_change``

    Everything runs in numpy, outside any ONNX graph (a closure-driven method re-evaluates the
    model between its updates, which a single update graph cannot express): the direction,
    the line search and ``x <- x + t * d`` alike, in the parameters' dtype as torch's tensors
    are (so float32 parameters give float32 arithmetic). It returns the first ``closure()``'s loss.

    State, as in torch, is one dict shown under the first parameter: ``func_evals``, ``n_iter``,
    ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``
    (numpy arrays, lists of them and scalars). One param group only, of one dtype; ``lr`` may
    change between steps.

    Args:
        params: Parameters (one group).
        lr: learning rate (the initial step length), >= 0.
        max_iter: iterations per ``step``, an int >= 1.
        max_eval: closure evaluations per ``step``; default ``max_iter * 5 // 4``.
        tolerance_grad: stop when ``max |g|`` is at most this.
        tolerance_change: stop when the step or the loss changes by less.
        history_size: how many ``(y, s)`` pairs are kept, an int >= 1.
        line_search_fn: None (fixed step ``t``) or "strong_wolfe".
    """

    def __init__(self, params: Iterable[Any] | None = None, lr: float = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 history_size: int = 100, line_search_fn: str | None = None, *, providers: Any = None,
                 runtime: Any = None):
        if max_eval is None:
            max_eval = max_iter * 5 // 4 if isinstance(max_iter, numbers.Integral) else max_iter
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        self._lbfgs: dict[str, Any] = {}
        super().__init__(params, defaults, providers=providers, runtime=runtime)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """The one param group (a second raises, as torch's LBFGS refuses groups); one dtype."""
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        if isinstance(param_group, Mapping):
            params = param_group.get("params")
            params = [params] if isinstance(params, Parameter) else list(params or ())
            dtypes = {str(p.dtype) for p in params if isinstance(p, Parameter)}
            if len(dtypes) > 1:
                raise ValueError(f"LBFGS param group 0: all parameters must have one dtype (one flat vector), "
                                 f"got {sorted(dtypes)}")
            param_group = {**param_group, "params": params}
        super().add_param_group(param_group)

    def _validate(self, group: Mapping[str, Any], where: str) -> None:
        for key in ("lr", "tolerance_grad", "tolerance_change"):
            validation.nonnegative(where, key, group[key])
        for key in ("max_iter", "max_eval", "history_size"):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{where}: {key!r} must be an int >= 1, got {value!r}")
        if group["line_search_fn"] not in LINE_SEARCHES:
            raise ValueError(f"{where}: 'line_search_fn' must be None or 'strong_wolfe', "
                             f"got {group['line_search_fn']!r}")

    # -- flat vectors ---------------------------------------------------------------

    def _flat(self):
        flats = self._flats[0]
        return flats[0] if flats else None

    def _x(self) -> np.ndarray:
        """All parameters as one vector: a view of the group's flat buffer."""
        flat = self._flat()
        return flat.data[:flat.offsets[-1]]

    def _flat_grad(self) -> np.ndarray:
        flat = self._flat()
        return np.concatenate([np.zeros(p.size, flat.dtype) if p.grad is None else self._stored_grad(p).ravel()
                               for p in flat.params])

    def _evaluate(self, closure: Callable[[], Any]) -> float:
        return float(closure())

    # -- the step ---------------------------------------------------------------------

    @serialized
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # noqa: C901 - torch's algorithm, in order
        """One L-BFGS step of up to ``max_iter`` iterations; returns the first ``closure()``'s loss."""
        if closure is None:
            raise TypeError("LBFGS.step needs a closure that sets every parameter's grad and returns the loss")
        group = self.param_groups[0]
        self._check_group(group, "LBFGS param group 0")
        self._check_unchanged_params(0, group)
        self._summing = False
        if self._flat() is None:
            return closure()
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        state = self._lbfgs
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        x = self._x()
        dtype = x.dtype.type

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._flat_grad()
        if np.abs(flat_grad).max() <= tolerance_grad:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                h_diag = 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = np.dot(y, s)
                if ys > 1e-10:
                    if len(old_dirs) == group["history_size"]:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(dtype(1.0) / ys)
                    h_diag = ys / np.dot(y, y)
                d = self._two_loop(flat_grad, old_dirs, old_stps, ro, h_diag)
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss

            t = min(1.0, dtype(1.0) / np.abs(flat_grad).sum()) * lr if state["n_iter"] == 1 else lr
            gtd = np.dot(flat_grad, d)
            if gtd > -tolerance_change:
                break

            evals = 0
            if group["line_search_fn"] is not None:
                start = x.copy()

                def along(step_length, start=start, direction=d):
                    self._add(step_length, direction)
                    value = float(closure())
                    gradient = self._flat_grad()
                    np.copyto(x, start)
                    return value, gradient

                loss, flat_grad, t, evals = strong_wolfe(along, t, d, loss, flat_grad, gtd,
                                                         max_ls=max_eval - current_evals)
                self._add(t, d)
                opt_cond = np.abs(flat_grad).max() <= tolerance_grad
            else:
                self._add(t, d)
                opt_cond = False
                if n_iter != max_iter:  # re-evaluated only if another iteration may follow
                    loss = float(closure())
                    flat_grad = self._flat_grad()
                    opt_cond = np.abs(flat_grad).max() <= tolerance_grad
                    evals = 1
            current_evals += evals
            state["func_evals"] += evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if np.abs(d * t).max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss

    @staticmethod
    def _two_loop(flat_grad, old_dirs, old_stps, ro, h_diag) -> np.ndarray:
        """``-H g`` by the L-BFGS two-loop recursion over the history (torch's one-buffer form)."""
        al = [None] * len(old_dirs)
        q = -flat_grad
        for i in range(len(old_dirs) - 1, -1, -1):
            al[i] = np.dot(old_stps[i], q) * ro[i]
            q = q - al[i] * old_dirs[i]
        r = q * h_diag
        for i in range(len(old_dirs)):
            be_i = np.dot(old_dirs[i], r) * ro[i]
            r = r + (al[i] - be_i) * old_stps[i]
        return r

    def _add(self, t, d: np.ndarray) -> None:
        """``x <- x + t * d`` in place (the parameters' values)."""
        x = self._x()
        x += x.dtype.type(t) * d

    # -- state ---------------------------------------------------------------------------

    @property
    @serialized
    def state(self) -> dict:
        """``{first parameter: state}`` once a step was taken (torch registers LBFGS's global state so)."""
        if not self._lbfgs or not self.param_groups or not self.param_groups[0]["params"]:
            return {}
        return {self.param_groups[0]["params"][0]: self._lbfgs}

    @serialized
    def state_dict(self) -> dict[str, Any]:
        """``{'state': {0: state} or {}, 'param_groups': [settings], 'class': 'LBFGS'}``, all copies."""
        self._check_unchanged_params(0, self.param_groups[0])
        group = self.param_groups[0]
        settings = {**{k: v for k, v in group.items() if k != "params"}, "params": list(range(len(group["params"])))}
        return {"state": {0: copy.deepcopy(self._lbfgs)} if self._lbfgs else {}, "param_groups": [settings],
                "class": type(self).__name__}

    @serialized
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`; raises, changing nothing, if its class, group or vectors do not fit."""
        if not isinstance(state_dict, Mapping) or set(state_dict) - {"state", "param_groups", "class"} \
                or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("LBFGS.load_state_dict: expected a dict with keys 'state', 'param_groups' and 'class'")
        if state_dict.get("class", "LBFGS") != "LBFGS":
            raise ValueError(f"LBFGS.load_state_dict: the state dict is from {state_dict['class']}, this optimizer is "
                             "LBFGS; another optimizer's state cannot be loaded")
        groups = list(state_dict["param_groups"])
        if len(groups) != 1:
            raise ValueError(f"LBFGS.load_state_dict: expected 1 param group, got {len(groups)}")
        loaded = self._loaded_group(0, groups[0], "LBFGS")
        saved = dict(state_dict["state"])
        if set(saved) - {0, "0"}:
            raise ValueError(f"LBFGS.load_state_dict: state for parameters {sorted(map(str, saved))}; LBFGS keeps "
                             "one state, under parameter 0")
        state = copy.deepcopy(dict(next(iter(saved.values())))) if saved else {}
        self._check_state(state)
        self.param_groups[0].update(loaded)
        self._lbfgs = state

    def _check_state(self, state: Mapping[str, Any]) -> None:
        where = "LBFGS.load_state_dict: state"
        allowed = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad",
                   "prev_loss", "al"}
        if set(state) - allowed:
            raise ValueError(f"{where}: unexpected entries {sorted(map(str, set(state) - allowed))}")
        size = self._flat().offsets[-1] if self._flat() is not None else 0
        vectors = [(k, state.get(k)) for k in VECTORS] + [(k, v) for k in HISTORY for v in state.get(k) or ()]
        for key, value in vectors:
            if value is not None and (np.shape(value) != (size,) or np.asarray(value).dtype.kind != "f"):
                raise ValueError(f"{where}: {key!r} must hold float vectors of {size} elements (all parameters), "
                                 f"got shape {np.shape(value)}")
        for key in ("func_evals", "n_iter"):
            value = state.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{where}: {key!r} must be an int >= 0, got {value!r}")

    def _transform(self, group: Mapping[str, Any]):
        raise NotImplementedError("LBFGS runs outside ONNX (it re-evaluates the closure between updates): it has no "
                                  "transform chain, so it cannot be exported or used by a Trainer; call "
                                  "step(closure) instead")

    def export(self, path: str | None = None):
        raise NotImplementedError("LBFGS runs outside ONNX (it re-evaluates the closure between updates); it has "
                                  "no update model to export")
