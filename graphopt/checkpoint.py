"""Checkpoints: an optimizer's, a Trainer's or an lr scheduler's ``state_dict()`` as one ``.npz`` file,
without pickle.

A checkpoint is a zip of ``.npy`` members, readable by ``np.load``: ``__meta__`` holds UTF-8
JSON (format name, version, what kind of state, step counts, group settings, and the dtype and
shape of every array), and each array is a member ``arrayN`` named there. Version 2 (this one)::

    {"format": "graphopt-state-dict", "version": 2, "kind": "optimizer" | "trainer",
     "arrays": {"array0": {"dtype": "<f4", "shape": [2, 3]}, ...},
     "optimizer": {"state": {"0": {"step": 3, "slots": {"exp_avg": "array0", ...}}},
                   "param_groups": [{"lr": 0.001, ..., "params": [0, 1]}]},
     "parameters": {"W": "array2", ...}, "buffers": {...},          # "trainer" only
     "grad_scaler": {"scale": 65536.0, ...}}                        # a trainer's with a GradScaler

A scheduler's state dict (`graphopt.optim.lr_scheduler`: plain numbers, strings, bools, None, lists
and string-keyed dicts of them; recognized by its ``_last_lr`` entry) is stored whole as JSON:
``{"format": ..., "version": 2, "kind": "scheduler", "arrays": {}, "scheduler": {...}}``.

A per-tensor scalar slot (NAdam's ``mu_product``, ASGD's ``eta``: a float in ``state_dict()``) is
stored like any slot, as a 0-d float64 array member, and read back as a 0-d array, which
``load_state_dict`` accepts as well as a float.

Saving writes a temporary file in the target's folder, flushes and fsyncs it, then renames it over
the target, so a crash mid-save leaves the previous checkpoint whole. Loading reads nothing it has
not bounded first: the metadata member's size is capped, every array member must be exactly as
large as the dtype and shape the metadata declares (checked on the zip's directory before any
byte is inflated), arrays are numeric only and read with ``allow_pickle=False``. Any file that is
not such a checkpoint raises `CheckpointError`, naming the file and the part. Version 1 files
(optimizer state only, written before shapes were recorded) are still read; their members must be
stored uncompressed, as graphopt wrote them, so they cannot inflate beyond the file's own size.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import operator
import os
import secrets
import zipfile
from typing import Any, Mapping

import numpy as np

FORMAT = "graphopt-state-dict"
VERSION = 2
_META = "__meta__"
_MAX_META_BYTES = 64 << 20  # the metadata of a model with a million parameter tensors fits
_MAX_HEADER = 10_000  # numpy's own limit on a .npy header
_MAX_RATIO = 1032  # the most deflate can expand its input
_KINDS = {"optimizer": {"state", "param_groups"}, "trainer": {"parameters", "buffers", "optimizer"}}
_OPTIONAL = {"optimizer": set(), "trainer": {"grad_scaler"}}  # keys a state dict of that kind may add
_MAX_DEPTH = 32  # a scheduler's state nests a few levels (SequentialLR of ChainedSchedulers)


class CheckpointError(ValueError):
    """A state dict that cannot be saved, or a file that is not a readable graphopt checkpoint."""


# -- saving ---------------------------------------------------------------------------------


def save_state_dict(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write an optimizer's, a Trainer's or an lr scheduler's ``state_dict()`` to ``path`` atomically.

    Raises `CheckpointError`, writing nothing, for a value a checkpoint cannot hold (a slot that
    is not a numeric array, a group setting that is not a number, string, bool, None or list).
    """
    meta, arrays = _Encoder(path).encode(state_dict)
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _write_atomically(os.path.realpath(path), {_META: blob, **arrays})


class _Encoder:
    """Splits a state dict into the JSON metadata and the arrays it names."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.arrays, self.specs = path, {}, {}

    def fail(self, part: str, message: str) -> CheckpointError:
        return CheckpointError(f"save_state_dict({os.fspath(self.path)!r}): {part}: {message}")

    def encode(self, state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        kind = _kind_of(state_dict)
        if kind is None:
            raise self.fail("state_dict", "expected an optimizer's state_dict() (keys 'state', 'param_groups'), "
                            "a Trainer's (keys 'parameters', 'buffers', 'optimizer') or an lr scheduler's "
                            "(with '_last_lr')")
        meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": kind}
        if kind == "scheduler":
            meta["scheduler"] = self.plain(state_dict, "state_dict", 0)
        elif kind == "trainer":
            meta["optimizer"] = self.optimizer(state_dict["optimizer"], "optimizer")
            for part in ("parameters", "buffers"):
                meta[part] = {self.name(name, f"{part} name"): self.array(value, f"{part}[{name!r}]")
                              for name, value in self.mapping(state_dict[part], part).items()}
            if "grad_scaler" in state_dict:
                meta["grad_scaler"] = {self.name(key, "grad_scaler key"): self.scalar(value, f"grad_scaler[{key!r}]")
                                       for key, value in self.mapping(state_dict["grad_scaler"], "grad_scaler").items()}
        else:
            meta["optimizer"] = self.optimizer(state_dict, "state_dict")
        meta["arrays"] = self.specs
        return meta, self.arrays

    def optimizer(self, state_dict: Any, where: str) -> dict[str, Any]:
        if _kind_of(state_dict) != "optimizer":
            raise self.fail(where, "expected an optimizer's state_dict() with keys 'state' and 'param_groups'")
        state = {}
        for index, slots in self.mapping(state_dict["state"], f"{where}['state']").items():
            at = f"{where}['state'][{index!r}]"
            slots = self.mapping(slots, at)
            if "step" not in slots:
                raise self.fail(at, "has no 'step'")
            state[str(self.count(index, f"{at} (the parameter index)"))] = {
                "step": self.count(slots["step"], f"{at}['step']"),
                "slots": {self.name(slot, f"{at} slot name"): self.array(value, f"{at}[{slot!r}]")
                          for slot, value in slots.items() if slot != "step"}}
        if not isinstance(state_dict["param_groups"], (list, tuple)):
            raise self.fail(f"{where}['param_groups']", "expected a list of dicts")
        encoded = {"state": state, "param_groups": [self.group(group, f"{where}['param_groups'][{g}]")
                                                    for g, group in enumerate(state_dict["param_groups"])]}
        if "class" in state_dict:
            encoded["class"] = self.name(state_dict["class"], f"{where}['class']")
        return encoded

    def group(self, group: Any, where: str) -> dict[str, Any]:
        return {self.name(key, f"{where} key"): self.setting(value, f"{where}[{key!r}]")
                for key, value in self.mapping(group, where).items()}

    def array(self, value: Any, where: str) -> str:
        """Store ``value`` as the next array member and return its name."""
        try:
            array = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise self.fail(where, f"cannot store a {type(value).__name__} as an array ({exc})") from None
        if not _numeric(array.dtype):
            raise self.fail(where, f"must be a numeric array, got a {type(value).__name__} (numpy dtype "
                            f"{array.dtype}); a checkpoint holds bool, integer and float arrays only")
        member = f"array{len(self.arrays)}"
        self.arrays[member] = array
        self.specs[member] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        return member

    def setting(self, value: Any, where: str) -> Any:
        """A group setting as JSON holds it: a number, bool, string, None or a list of them."""
        if isinstance(value, (list, tuple)):
            return [self.scalar(v, where) for v in value]
        return self.scalar(value, where)

    def scalar(self, value: Any, where: str) -> Any:
        """A number, bool, string or None as its plain Python value."""
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
        raise self.fail(where, f"cannot store a {type(value).__name__} (numbers, bools, strings, None "
                        "and lists of them only)")

    def plain(self, value: Any, where: str, depth: int) -> Any:
        """A scheduler's state as JSON holds it: string-keyed dicts, lists and scalars (never a callable)."""
        if depth > _MAX_DEPTH:
            raise self.fail(where, f"nested deeper than {_MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            return {self.name(k, f"{where} key"): self.plain(v, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return self.scalar(value, where)

    def mapping(self, value: Any, where: str) -> Mapping[Any, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a dict, got a {type(value).__name__}")
        return value

    def name(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, got {value!r}")
        return value

    def count(self, value: Any, where: str) -> int:
        try:
            number = operator.index(value)
        except TypeError:
            raise self.fail(where, f"must be an integer, got {value!r}") from None
        if number < 0:
            raise self.fail(where, f"must be >= 0, got {number}")
        return number


def _kind_of(state_dict: Any) -> str | None:
    """'optimizer' or 'trainer' by the keys of ``state_dict`` (an optimizer's may name its
    ``class``, a trainer's may add ``grad_scaler``), 'scheduler' for a dict with ``_last_lr``
    (every lr scheduler's, graphopt's and torch's), or None."""
    keys = set(state_dict) - {"class"} if isinstance(state_dict, Mapping) else None
    kind = next((kind for kind, expected in _KINDS.items() if keys is not None and expected <= keys <=
                 expected | _OPTIONAL[kind]), None)
    return "scheduler" if kind is None and keys is not None and "_last_lr" in keys else kind


def _numeric(dtype: np.dtype) -> bool:
    """Bool, integer or float, not structured: what a checkpoint stores (never object arrays)."""
    return dtype.kind in "biuf" and dtype.fields is None and dtype.subdtype is None


def _write_atomically(path: str, members: Mapping[str, np.ndarray]) -> None:
    """Write ``members`` as an ``.npz`` at ``path`` via a fsynced temporary file renamed over it."""
    folder, base = os.path.split(path)
    temporary = os.path.join(folder, f".{base}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_archive(f, members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def _write_archive(f, members: Mapping[str, np.ndarray]) -> None:
    """The zip itself: one uncompressed ``.npy`` member per array."""
    np.savez(f, allow_pickle=False, **members)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable where the platform allows syncing a folder (POSIX)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- loading --------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_state_dict`: the optimizer's, Trainer's or scheduler's state dict.

    The result is accepted by ``load_state_dict`` of the optimizer, Trainer or scheduler it came from
    (a scheduler's tuples come back as lists).
    Raises `CheckpointError` naming the file and the part for anything that is not such a
    checkpoint (never unpickles or executes anything); `OSError` if the file cannot be opened.
    """
    with open(path, "rb") as f:
        return _Loader(os.fspath(path), f).load()


class _Loader:
    """Reads one checkpoint, checking every part against the metadata before using it."""

    def __init__(self, path: str, f) -> None:
        self.path, self.size = path, os.fstat(f.fileno()).st_size
        try:
            self.zip = zipfile.ZipFile(f)
            self.members = {info.filename: info for info in self.zip.infolist()}
        except Exception as exc:  # hostile bytes raise many kinds of errors inside zipfile
            raise self.fail("archive", f"not a readable zip file ({exc})") from None
        if len(self.members) != len(self.zip.infolist()):
            raise self.fail("archive", "has duplicate member names")

    def fail(self, part: str, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {part[:200]}: {message[:500]}")

    def load(self) -> dict[str, Any]:
        meta = self.meta()
        if meta["version"] == 1:
            meta = self.upgrade(meta)
        self.specs = self.array_specs(meta)
        unexpected = set(self.members) - {f"{name}.npy" for name in [_META, *self.specs]}
        if unexpected:
            raise self.fail("archive", f"unexpected members {sorted(unexpected)[:5]}")
        if meta["kind"] == "scheduler":
            return _field(self, meta, "scheduler", dict, _META)  # JSON holds plain values only
        optimizer = self.optimizer(_field(self, meta, "optimizer", dict, _META))
        if meta["kind"] == "optimizer":
            return optimizer
        loaded = {"parameters": self.named_arrays(meta, "parameters"), "buffers": self.named_arrays(meta, "buffers"),
                  "optimizer": optimizer}
        if "grad_scaler" in meta:
            loaded["grad_scaler"] = self.settings(meta, "grad_scaler")
        return loaded

    # -- the metadata member

    def meta(self) -> dict[str, Any]:
        """The parsed ``__meta__`` JSON, with its format, version and kind checked."""
        if f"{_META}.npy" not in self.members:
            raise self.fail(_META, "no such member: not a graphopt state dict")
        blob = self.read(_META, np.dtype(np.uint8), None, _MAX_META_BYTES)
        try:
            meta = json.loads(blob.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self.fail(_META, f"not valid UTF-8 JSON ({type(exc).__name__})") from None
        if not isinstance(meta, dict):
            raise self.fail(_META, f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") != FORMAT:
            raise self.fail(f"{_META} 'format'", f"expected {FORMAT!r}, got {_brief(meta.get('format'))}: "
                            "not a graphopt checkpoint")
        version = _field(self, meta, "version", int, _META)
        if version > VERSION:
            raise self.fail(f"{_META} 'version'", f"format version {version} was written by a newer graphopt; "
                            f"this one reads versions 1 to {VERSION}")
        if version < 1:
            raise self.fail(f"{_META} 'version'", f"unknown format version {version}")
        if version > 1 and meta.get("kind") not in [*_KINDS, "scheduler"]:
            raise self.fail(f"{_META} 'kind'", f"expected one of {sorted([*_KINDS, 'scheduler'])}, "
                            f"got {_brief(meta.get('kind'))}")
        return meta

    def array_specs(self, meta: Mapping[str, Any]) -> dict[str, tuple[np.dtype, tuple[int, ...]] | None]:
        """Member name -> declared (dtype, shape); None for version 1 members, which declare none."""
        specs = {}
        for member, spec in _field(self, meta, "arrays", dict, _META).items():
            where = f"{_META} 'arrays'[{member!r}]"
            if spec is None and meta.get("version") == 1:
                specs[member] = None
                continue
            shape = _field(self, spec, "shape", list, where)
            if len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
                raise self.fail(where, f"'shape' must be a list of at most 32 integers >= 0, got {_brief(shape)}")
            specs[member] = (self.dtype(_field(self, spec, "dtype", str, where), where), tuple(shape))
        return specs

    def dtype(self, text: str, where: str) -> np.dtype:
        try:
            dtype = np.dtype(text)
        except (TypeError, ValueError, SyntaxError):
            raise self.fail(where, f"unknown dtype {text[:50]!r}") from None
        if not _numeric(dtype):
            raise self.fail(where, f"dtype {dtype} is not a bool, integer or float type")
        return dtype

    def upgrade(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Version 1 metadata (optimizer only, ``slots`` a list, members ``state/i/slot``) as version 2."""
        state = _field(self, meta, "state", dict, _META)
        for index, entry in state.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("slots"), list) \
                    or not all(isinstance(slot, str) for slot in entry["slots"]):
                raise self.fail(f"{_META} state[{index!r}]", "expected {'step': int, 'slots': [names]}")
        arrays = {f"state/{i}/{slot}": None for i, entry in state.items() for slot in entry["slots"]}
        state = {i: {**entry, "slots": {slot: f"state/{i}/{slot}" for slot in entry["slots"]}}
                 for i, entry in state.items()}
        return {**meta, "kind": "optimizer", "arrays": arrays,
                "optimizer": {"state": state, "param_groups": meta.get("param_groups")}}

    # -- the state

    def optimizer(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """``{'state': {index: {'step': int, slot: array}}, 'param_groups': [...]}``."""
        state = {}
        for index, entry in _field(self, meta, "state", dict, "optimizer").items():
            where = f"{_META} optimizer state[{index!r}]"
            if not (index.isascii() and index.isdigit()):
                raise self.fail(where, "the parameter index must be a non-negative integer")
            step = _field(self, entry, "step", int, where)
            if step < 0:
                raise self.fail(f"{where} 'step'", f"must be >= 0, got {step}")
            slots = _field(self, entry, "slots", dict, where)
            state[int(index)] = {"step": step, **{slot: self.array(member, f"{where}[{slot!r}]")
                                                  for slot, member in slots.items()}}
        groups = _field(self, meta, "param_groups", list, "optimizer")
        loaded = {"state": state, "param_groups": [self.group(g, group) for g, group in enumerate(groups)]}
        if "class" in meta:
            loaded["class"] = _field(self, meta, "class", str, "optimizer")
        return loaded

    def group(self, g: int, group: Any) -> dict[str, Any]:
        """One param group's settings, lists turned back into tuples (betas), params a list of indices."""
        where = f"{_META} optimizer param_groups[{g}]"
        if not isinstance(group, dict):
            raise self.fail(where, f"expected a JSON object, got {type(group).__name__}")
        params = _field(self, group, "params", list, where)
        if not all(type(i) is int and i >= 0 for i in params):
            raise self.fail(f"{where} 'params'", "must be a list of parameter indices >= 0")
        for key, value in group.items():
            if not _plain_setting(value):
                raise self.fail(f"{where}[{key!r}]", "must be a number, string, bool, null or a list of them")
        return {key: tuple(value) if isinstance(value, list) and key != "params" else value
                for key, value in group.items()}

    def settings(self, meta: Mapping[str, Any], part: str) -> dict[str, Any]:
        """A dict of plain numbers, strings, bools and nulls (a GradScaler's state dict)."""
        values = _field(self, meta, part, dict, _META)
        for key, value in values.items():
            if isinstance(value, list) or not _plain_setting(value):
                raise self.fail(f"{_META} {part}[{key!r}]", "must be a number, string, bool or null")
        return dict(values)

    def named_arrays(self, meta: Mapping[str, Any], part: str) -> dict[str, np.ndarray]:
        """A Trainer's parameters or buffers: name -> array."""
        return {name: self.array(member, f"{_META} {part}[{name!r}]")
                for name, member in _field(self, meta, part, dict, _META).items()}

    def array(self, member: Any, where: str) -> np.ndarray:
        """The array of ``member``, which the metadata must declare."""
        if not isinstance(member, str) or member not in self.specs or member == _META:
            raise self.fail(where, f"names {_brief(member)}, which is not a declared array member")
        spec = self.specs[member]
        if spec is None:  # version 1: no declared shape; stored members cannot exceed the file
            return self.read(member, None, None, self.size, stored=True)
        dtype, shape = spec
        return self.read(member, dtype, shape, math.prod(shape) * dtype.itemsize)

    # -- members

    def read(self, member: str, dtype: np.dtype | None, shape: tuple[int, ...] | None, limit: int,
             stored: bool = False) -> np.ndarray:
        """Read ``member.npy`` after bounding it: at most ``limit`` data bytes, the declared dtype and shape."""
        where = f"member {member!r}"
        info = self.members.get(f"{member}.npy")
        if info is None:
            raise self.fail(where, "missing")
        self.bound(info, limit, stored, where)
        try:
            with self.zip.open(info) as fp:
                header = self.header(fp, where)
                self.check(header, fp.tell(), info, dtype, shape, where)
            with self.zip.open(info) as fp:
                array = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=_MAX_HEADER)
        except CheckpointError:
            raise
        except Exception as exc:  # corrupt data: zlib, CRC, truncation or header errors
            raise self.fail(where, f"unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def bound(self, info: zipfile.ZipInfo, limit: int, stored: bool, where: str) -> None:
        """Refuse, on the zip's directory alone, a member larger than ``limit`` data bytes or than its bytes
        on disk can inflate to (deflate expands at most 1032 times; stored members not at all)."""
        if info.file_size > limit + _MAX_HEADER + 16:
            raise self.fail(where, f"declares {info.file_size} bytes, more than the {limit} bytes of data "
                            "the metadata allows: refusing to inflate it")
        if stored and info.compress_type != zipfile.ZIP_STORED:
            raise self.fail(where, "a version 1 member must be stored uncompressed")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.fail(where, f"unsupported compression method {info.compress_type}")
        ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_RATIO
        if info.compress_size > self.size or info.file_size > ratio * info.compress_size + 64:
            raise self.fail(where, f"declares {info.file_size} bytes from {info.compress_size} compressed bytes "
                            f"in a file of {self.size}: more than they can hold")

    def header(self, fp, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
        """The ``.npy`` header's (shape, fortran_order, dtype)."""
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_HEADER)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_HEADER)
        raise self.fail(where, f"unsupported .npy version {version}")

    def check(self, header, offset: int, info: zipfile.ZipInfo, dtype, shape, where: str) -> None:
        """The member's header matches the declaration and its size is exactly header + data."""
        got_shape, _, got_dtype = header
        if not _numeric(got_dtype):
            raise self.fail(where, f"dtype {got_dtype} is not a bool, integer or float type")
        if dtype is not None and got_dtype != dtype:
            raise self.fail(where, f"has dtype {got_dtype}, the metadata declares {dtype}")
        if shape is None and dtype is not None and len(got_shape) != 1:
            raise self.fail(where, f"must be one-dimensional, got shape {got_shape}")
        if shape is not None and tuple(got_shape) != shape:
            raise self.fail(where, f"has shape {tuple(got_shape)}, the metadata declares {shape}")
        if info.file_size != offset + math.prod(got_shape) * got_dtype.itemsize:
            raise self.fail(where, f"is {info.file_size} bytes, its header describes "
                            f"{offset + math.prod(got_shape) * got_dtype.itemsize}")


def _field(loader: _Loader, mapping: Any, key: str, kind: type, where: str) -> Any:
    """``mapping[key]``, which must exist and be a ``kind`` (an int is never a bool)."""
    if not isinstance(mapping, dict):
        raise loader.fail(where, f"expected a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise loader.fail(where, f"missing {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise loader.fail(f"{where} {key!r}", f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _brief(value: Any) -> str:
    """A short, safe description of a JSON value for an error message."""
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value[:33]):
        return repr(value[:33])[:200]
    return repr(value)[:200] if value is None or isinstance(value, (bool, int, float, str)) else type(value).__name__


def _plain_setting(value: Any) -> bool:
    """A number, string, bool, None, or a list of them."""
    values = value if isinstance(value, list) else [value]
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
