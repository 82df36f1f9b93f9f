"""Saving and loading state dicts as ``.npz`` files, without pickle.

Arrays are stored as ``npz`` members; step counts and group settings as one JSON
member. `load_state_dict` reads with ``allow_pickle=False``, so a file can never
execute code.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, Mapping

import numpy as np

FORMAT = "graphopt-state-dict"
VERSION = 1
_META = "__meta__"


def save_state_dict(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write an optimizer's ``state_dict()`` to ``path`` (an ``.npz`` file)."""
    arrays: dict[str, np.ndarray] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for index, slots in state_dict["state"].items():
        entry = state_meta[str(int(index))] = {"step": int(slots["step"]), "slots": []}
        for slot, value in slots.items():
            if slot != "step":
                arrays[f"state/{int(index)}/{slot}"] = np.asarray(value)
                entry["slots"].append(slot)
    groups = [{key: _plain(value, f"param_groups[{g}][{key!r}]") for key, value in group.items()}
              for g, group in enumerate(state_dict["param_groups"])]
    meta = {"format": FORMAT, "version": VERSION, "state": state_meta, "param_groups": groups}
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **{_META: blob}, **arrays)


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by `save_state_dict` (never unpickles anything)."""
    with np.load(path, allow_pickle=False) as archive:
        if _META not in archive.files:
            raise ValueError(f"{path}: not a graphopt state dict (no {_META} member)")
        meta = json.loads(archive[_META].tobytes().decode())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path}: expected {FORMAT} version {VERSION}, got {meta.get('format')} "
                             f"version {meta.get('version')}")
        state = {int(index): {"step": entry["step"],
                              **{slot: archive[f"state/{index}/{slot}"] for slot in entry["slots"]}}
                 for index, entry in meta["state"].items()}
    groups = [{key: tuple(value) if isinstance(value, list) and key != "params" else value
               for key, value in group.items()} for group in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON can hold it: numbers, bools, strings, None and lists of them."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in a state dict file")
