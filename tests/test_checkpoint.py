"""Checkpoints (graphopt.checkpoint): atomic saves, the format version, Trainer state, resumed runs
that continue bit for bit, and every malformed or hostile file refused with a CheckpointError."""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
import zipfile

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import checkpoint, losses, optim
from graphopt import CheckpointError

rng = np.random.default_rng(5)  # each test gets its own: conftest.py reseeds it from the node id


def _optimizer_state(steps=3, generator=None):
    """An Adam (amsgrad, two groups) after ``steps`` steps of random gradients (from ``generator``, else the
    test's), and its parameters."""
    generator = rng if generator is None else generator
    params = [graphopt.Parameter(np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)),
              graphopt.Parameter(np.array([0.5, -0.5], np.float32))]
    optimizer = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr_mult": 0.5}], amsgrad=True)
    for _ in range(steps):
        for p in params:
            p.grad = generator.standard_normal(p.shape).astype(np.float32)
        optimizer.step()
    return optimizer, params


def _assert_state_equal(got, expected):
    """Exact equality of nested dicts / lists of arrays and scalars, dtypes included."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            _assert_state_equal(got[key], expected[key])
    elif isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected, strict=True)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            _assert_state_equal(a, b)
    else:
        assert got == expected and type(got) is type(expected)


def _members(path):
    """The raw bytes of every member of the zip at ``path``."""
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def _meta(path):
    return json.loads(np.load(path, allow_pickle=False)["__meta__"].tobytes())


def _write(path, meta, arrays=None, raw=None, compression=zipfile.ZIP_STORED):
    """A checkpoint-like zip: ``meta`` as the ``__meta__`` member, ``arrays`` as .npy members, ``raw`` as given."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, value in {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **(arrays or {})}.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=True)
            z.writestr(f"{name}.npy", buffer.getvalue())
        for name, data in (raw or {}).items():
            z.writestr(name, data)
    return path


# -- round trips -------------------------------------------------------------------------------


def test_optimizer_state_round_trip_is_exact_and_loads_back(tmp_path):
    optimizer, _ = _optimizer_state()
    path = tmp_path / "adam.npz"
    graphopt.save_state_dict(optimizer.state_dict(), path)
    loaded = graphopt.load_state_dict(path)
    _assert_state_equal(loaded, optimizer.state_dict())
    meta = _meta(path)
    assert (meta["format"], meta["version"], meta["kind"]) == ("graphopt-state-dict", 2, "optimizer")
    optimizer.load_state_dict(loaded)


def _batch_norm_model() -> onnx.ModelProto:
    """``Flatten(BatchNormalization(x)) @ W``: parameters scale, bias, W and running statistics mean, var."""
    inits = [numpy_helper.from_array(v, k) for k, v in (
        ("scale", rng.random(3) + 0.5), ("bias", rng.standard_normal(3)), ("mean", rng.standard_normal(3)),
        ("var", rng.random(3) + 0.5), ("W", rng.standard_normal((12, 2))))]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"], momentum=0.8),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


_MODEL = _batch_norm_model()
_DATA = [(rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 2))) for _ in range(7)]


@pytest.mark.parametrize("make", [lambda: optim.Adam(lr=0.01, amsgrad=True),
                                  lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                  lambda: optim.AdamW(lr=0.01), lambda: optim.RMSprop(lr=0.01, centered=True)],
                         ids=["adam", "sgd", "adamw", "rmsprop"])
def test_a_resumed_trainer_continues_bit_for_bit(tmp_path, make):
    n = 3
    uninterrupted = graphopt.Trainer(_MODEL, losses.mse(), make())
    expected_losses = [uninterrupted.step({"x": x}, labels=t) for x, t in _DATA]

    first = graphopt.Trainer(_MODEL, losses.mse(), make())
    for x, t in _DATA[:n]:
        first.step({"x": x}, labels=t)
    path = tmp_path / "trainer.npz"
    graphopt.save_state_dict(first.state_dict(), path)
    del first

    resumed = graphopt.Trainer(_MODEL, losses.mse(), make())
    resumed.load_state_dict(graphopt.load_state_dict(path))
    assert [resumed.step({"x": x}, labels=t) for x, t in _DATA[n:]] == expected_losses[n:]
    _assert_state_equal(resumed.state_dict(), uninterrupted.state_dict())
    assert sorted(resumed.buffers) == ["mean", "var"]  # running statistics travelled too


def test_trainer_checkpoint_holds_parameters_buffers_and_optimizer(tmp_path):
    trainer = graphopt.Trainer(_MODEL, losses.mse(), optim.Adam(lr=0.01))
    trainer.step({"x": _DATA[0][0]}, labels=_DATA[0][1])
    path = tmp_path / "t.npz"
    graphopt.save_state_dict(trainer.state_dict(), path)
    loaded = graphopt.load_state_dict(path)
    _assert_state_equal(loaded, trainer.state_dict())
    assert _meta(path)["kind"] == "trainer"
    with np.load(path, allow_pickle=False) as archive:  # still a plain npz of numeric arrays
        assert all(archive[name].dtype.kind in "biuf" for name in archive.files)


def test_arrays_of_every_layout_and_numeric_dtype_round_trip(tmp_path):
    optimizer, _ = _optimizer_state()
    buffers = {"fortran": np.asfortranarray(rng.standard_normal((3, 4))), "scalar": np.array(2.5, np.float16),
               "empty": np.zeros((0, 3), np.float32), "flags": np.array([True, False]),
               "count": np.array(7, np.int64), "big_endian": np.arange(3, dtype=">u4"),
               "bytes": np.arange(4, dtype=np.int8)}
    state = {"parameters": {"a name/with odd..chars": np.ones(2)}, "buffers": buffers,
             "optimizer": optimizer.state_dict()}
    graphopt.save_state_dict(state, tmp_path / "odd.npz")
    loaded = graphopt.load_state_dict(tmp_path / "odd.npz")
    big_endian = loaded["buffers"].pop("big_endian")
    assert big_endian.dtype == np.uint32 and big_endian.dtype.isnative and big_endian.tolist() == [0, 1, 2]
    del buffers["big_endian"]
    _assert_state_equal(loaded, state)
    assert issubclass(CheckpointError, ValueError)


def test_version_1_files_are_still_read(tmp_path):
    optimizer, _ = _optimizer_state()
    saved = optimizer.state_dict()
    meta = {"format": "graphopt-state-dict", "version": 1,
            "state": {str(i): {"step": s["step"], "slots": [k for k in s if k != "step"]}
                      for i, s in saved["state"].items()},
            "param_groups": [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
                             for g in saved["param_groups"]]}
    arrays = {f"state/{i}/{k}": v for i, s in saved["state"].items() for k, v in s.items() if k != "step"}
    path = _write(tmp_path / "v1.npz", meta, arrays)
    _assert_state_equal(graphopt.load_state_dict(path), {k: v for k, v in saved.items() if k != "class"})  # none in v1
    deflated = _write(tmp_path / "v1z.npz", meta, arrays, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="version 1 member must be stored uncompressed"):
        graphopt.load_state_dict(deflated)


# -- atomic writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_a_save_that_fails_midway_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch, failure):
    optimizer, params = _optimizer_state()
    path = tmp_path / "opt.npz"
    graphopt.save_state_dict(optimizer.state_dict(), path)
    old_bytes, old_state = path.read_bytes(), optimizer.state_dict()
    real = checkpoint._write_archive

    def half_then_fail(f, members):
        buffer = io.BytesIO()
        real(buffer, members)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise failure

    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    optimizer.step()  # the new state differs from the saved one
    monkeypatch.setattr(checkpoint, "_write_archive", half_then_fail)
    with pytest.raises(type(failure)):
        graphopt.save_state_dict(optimizer.state_dict(), path)
    assert path.read_bytes() == old_bytes
    _assert_state_equal(graphopt.load_state_dict(path), old_state)
    assert os.listdir(tmp_path) == ["opt.npz"]
    monkeypatch.undo()
    graphopt.save_state_dict(optimizer.state_dict(), path)  # and the next save replaces it
    _assert_state_equal(graphopt.load_state_dict(path), optimizer.state_dict())
    assert os.listdir(tmp_path) == ["opt.npz"]


def test_save_is_a_rename_of_a_synced_file_in_the_same_folder(tmp_path, monkeypatch):
    optimizer, _ = _optimizer_state()
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", os.path.dirname(a), b)),
                                                     real_replace(a, b))[1])
    target = tmp_path / "opt.npz"
    graphopt.save_state_dict(optimizer.state_dict(), target)
    assert calls[0] == "fsync" and calls[1] == ("replace", str(tmp_path), str(target))


def test_a_new_checkpoint_gets_the_usual_permissions(tmp_path):
    optimizer, _ = _optimizer_state()
    old = os.umask(0o027)
    try:
        graphopt.save_state_dict(optimizer.state_dict(), tmp_path / "opt.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "opt.npz").stat().st_mode & 0o777 == 0o640


# -- refused at save time ----------------------------------------------------------------------


@pytest.mark.parametrize("value, match", [
    (None, r"\['state'\]\[0\]\['exp_avg'\]: must be a numeric array, got a NoneType"),
    ({"a": 1}, r"\['exp_avg'\]: must be a numeric array, got a dict"),
    ("text", r"\['exp_avg'\]: must be a numeric array, got a str"),
    ([[1.0], [1.0, 2.0]], r"\['exp_avg'\]: cannot store a list as an array"),
])
def test_a_non_array_slot_is_refused_at_save_time_writing_nothing(tmp_path, value, match):
    optimizer, _ = _optimizer_state()
    saved = optimizer.state_dict()
    saved["state"][0]["exp_avg"] = value
    with pytest.raises(CheckpointError, match=match):
        graphopt.save_state_dict(saved, tmp_path / "bad.npz")
    assert os.listdir(tmp_path) == []


def test_other_unstorable_state_is_refused_naming_the_part(tmp_path):
    optimizer, _ = _optimizer_state()
    saved = optimizer.state_dict()
    with pytest.raises(CheckpointError, match=r"param_groups'\]\[1\]\['lr'\]: cannot store a dict"):
        graphopt.save_state_dict({**saved, "param_groups": [saved["param_groups"][0],
                                                            {**saved["param_groups"][1], "lr": {}}]}, tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"\['state'\]\[0\]\['step'\]: must be an integer"):
        graphopt.save_state_dict({**saved, "state": {0: {**saved["state"][0], "step": 1.5}}}, tmp_path / "a")
    with pytest.raises(CheckpointError, match="expected an optimizer's state_dict"):
        graphopt.save_state_dict({"weights": np.zeros(3)}, tmp_path / "a")
    trainer_state = {"parameters": {"W": object()}, "buffers": {}, "optimizer": saved}
    with pytest.raises(CheckpointError, match=r"parameters\['W'\]: must be a numeric array"):
        graphopt.save_state_dict(trainer_state, tmp_path / "a")
    assert os.listdir(tmp_path) == []


# -- refused at load time ----------------------------------------------------------------------


def _valid(tmp_path):
    optimizer, _ = _optimizer_state()
    path = tmp_path / "valid.npz"
    graphopt.save_state_dict(optimizer.state_dict(), path)
    return path, _meta(path), {name[:-4]: np.load(path)[name[:-4]] for name in _members(path) if name != "__meta__.npy"}


def _edit(meta, *keys_and_value):
    """``meta`` with the value at the path ``keys`` replaced (or deleted when the value is ``...``)."""
    *keys, value = keys_and_value
    meta = json.loads(json.dumps(meta))
    target = meta
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return meta


META_CASES = {
    "not an object": (lambda m: [m], "__meta__: expected a JSON object, got list"),
    "format": (lambda m: _edit(m, "format", "pytorch"), "'format': expected 'graphopt-state-dict'"),
    "newer version": (lambda m: _edit(m, "version", 3), "format version 3 was written by a newer graphopt"),
    "version 0": (lambda m: _edit(m, "version", 0), "unknown format version 0"),
    "version text": (lambda m: _edit(m, "version", "2"), "'version': expected int, got str"),
    "version bool": (lambda m: _edit(m, "version", True), "'version': expected int, got bool"),
    "kind": (lambda m: _edit(m, "kind", "model"), "'kind': expected one of"),
    "no arrays": (lambda m: _edit(m, "arrays", ...), "missing 'arrays'"),
    "arrays list": (lambda m: _edit(m, "arrays", []), "'arrays': expected dict, got list"),
    "object dtype": (lambda m: _edit(m, "arrays", "array0", "dtype", "|O"), "dtype object is not a bool"),
    "bad dtype": (lambda m: _edit(m, "arrays", "array0", "dtype", "nonsense"), "unknown dtype 'nonsense'"),
    "structured dtype": (lambda m: _edit(m, "arrays", "array0", "dtype", "f4,i4"), "is not a bool, integer"),
    "wrong dtype": (lambda m: _edit(m, "arrays", "array0", "dtype", "<f8"), "has dtype float32, the metadata declares"),
    "shape": (lambda m: _edit(m, "arrays", "array0", "shape", [-1]), "'shape' must be a list of at most 32"),
    "shape float": (lambda m: _edit(m, "arrays", "array0", "shape", [2.0, 3]), "'shape' must be a list"),
    "wrong shape": (lambda m: _edit(m, "arrays", "array0", "shape", [3, 2]), "has shape \\(2, 3\\), the metadata"),
    "state list": (lambda m: _edit(m, "optimizer", "state", []), "'state': expected dict, got list"),
    "index": (lambda m: _edit(m, "optimizer", "state", {"x": m["optimizer"]["state"]["0"]}), "state\\['x'\\]"),
    "step text": (lambda m: _edit(m, "optimizer", "state", "0", "step", "3"), "'step': expected int, got str"),
    "step negative": (lambda m: _edit(m, "optimizer", "state", "0", "step", -3), "'step': must be >= 0"),
    "no step": (lambda m: _edit(m, "optimizer", "state", "0", "step", ...), "missing 'step'"),
    "slots list": (lambda m: _edit(m, "optimizer", "state", "0", "slots", ["exp_avg"]), "'slots': expected dict"),
    "undeclared": (lambda m: _edit(m, "optimizer", "state", "0", "slots", "exp_avg", "array99"),
                   "names 'array99', which is not a declared array member"),
    "meta as array": (lambda m: _edit(m, "optimizer", "state", "0", "slots", "exp_avg", "__meta__"),
                      "names '__meta__', which is not a declared"),
    "slot not name": (lambda m: _edit(m, "optimizer", "state", "0", "slots", "exp_avg", 7), "names 7"),
    "groups dict": (lambda m: _edit(m, "optimizer", "param_groups", {}), "'param_groups': expected list"),
    "group list": (lambda m: _edit(m, "optimizer", "param_groups", 0, []), "param_groups\\[0\\]: expected a JSON"),
    "params text": (lambda m: _edit(m, "optimizer", "param_groups", 0, "params", ["0"]), "'params': must be a list"),
    "setting dict": (lambda m: _edit(m, "optimizer", "param_groups", 0, "lr", {"a": 1}), "\\['lr'\\]: must be a"),
    "nested setting": (lambda m: _edit(m, "optimizer", "param_groups", 0, "betas", [[0.9]]), "\\['betas'\\]: must"),
    "no optimizer": (lambda m: _edit(m, "optimizer", ...), "missing 'optimizer'"),
    "trainer without parts": (lambda m: _edit(m, "kind", "trainer"), "missing 'parameters'"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_malformed_metadata_is_refused_naming_file_and_part(tmp_path, case):
    path, meta, arrays = _valid(tmp_path)
    change, match = META_CASES[case]
    bad = _write(tmp_path / "bad.npz", change(meta), arrays)
    with pytest.raises(CheckpointError, match=match) as error:
        graphopt.load_state_dict(bad)
    assert str(bad) in str(error.value)


@pytest.mark.parametrize("blob, match", [
    (b"\xff\xfe{}", "not valid UTF-8 JSON"), (b"{'a': 1}", "not valid UTF-8 JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "not valid UTF-8 JSON"), (b"1" * 5000, "not valid UTF-8 JSON"),
])
def test_garbled_metadata_is_refused(tmp_path, blob, match):
    path = tmp_path / "bad.npz"
    np.savez(path, __meta__=np.frombuffer(blob, np.uint8))
    with pytest.raises(CheckpointError, match=match):
        graphopt.load_state_dict(path)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_broken_archives_are_refused(tmp_path):
    path, meta, arrays = _valid(tmp_path)
    cases = {
        "not a readable zip file": b"hello",
        "not a readable zip file ": b"",
        "__meta__: no such member": _write(tmp_path / "m.npz", meta, {}, raw={}).read_bytes().replace(
            b"__meta__.npy", b"__mexa__.npy"),
        "unexpected members \\['evil.py'\\]": _write(tmp_path / "e.npz", meta, arrays,
                                                     raw={"evil.py": b"x"}).read_bytes(),
        "member 'array1': missing": _write(tmp_path / "g.npz", meta, {"array0": arrays["array0"]}).read_bytes(),
        "duplicate member names": _write(tmp_path / "d.npz", meta, arrays, raw={"array0.npy": b"x"}).read_bytes(),
    }
    for match, data in cases.items():
        bad = tmp_path / "bad.npz"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match=match):
            graphopt.load_state_dict(bad)
    truncated = path.read_bytes()[:-100]
    (tmp_path / "t.npz").write_bytes(truncated)
    with pytest.raises(CheckpointError, match="not a readable zip"):
        graphopt.load_state_dict(tmp_path / "t.npz")


def test_pickled_object_arrays_are_never_unpickled(tmp_path):
    path, meta, arrays = _valid(tmp_path)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = np.empty(6, dtype=object)
    evil[:] = [Boom()] * 6
    for declared in ("<f4", "|O"):
        bad = _write(tmp_path / "bad.npz", _edit(meta, "arrays", "array0", "dtype", declared),
                     {**arrays, "array0": evil.reshape(2, 3)})
        with pytest.raises(CheckpointError, match="array0|object"):
            graphopt.load_state_dict(bad)
    assert not (tmp_path / "pwned").exists()


def _bomb(tmp_path, member, meta, arrays, size):
    """``arrays`` with ``member`` replaced by a valid .npy of ``size`` zero bytes, deflated."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, value in {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays}.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                if name != member:
                    np.lib.format.write_array(f, np.asarray(value))
                    continue
                dtype = np.uint8 if name == "__meta__" else np.float32
                np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                         "fortran_order": False,
                                                         "shape": (size // np.dtype(dtype).itemsize,)})
                chunk = b"\0" * (1 << 20)
                for _ in range(size >> 20):
                    f.write(chunk)
    return path


def test_a_zip_bomb_is_refused_quickly_without_inflating_it(tmp_path, monkeypatch):
    _, meta, arrays = _valid(tmp_path)
    path = _bomb(tmp_path, "array0", meta, arrays, 256 << 20)  # declared: 6 float32; inflates to 256 MiB
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="member 'array0': declares .* bytes, more than the 24 bytes"):
        graphopt.load_state_dict(path)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1 and peak < 4 << 20

    monkeypatch.setattr(checkpoint, "_MAX_META_BYTES", 1 << 20)  # the metadata member is capped too
    path = _bomb(tmp_path, "__meta__", meta, arrays, 4 << 20)
    with pytest.raises(CheckpointError, match="member '__meta__': declares"):
        graphopt.load_state_dict(path)


def test_a_member_whose_directory_entry_lies_about_its_size_is_refused_without_allocating(tmp_path):
    """Metadata, .npy header and zip directory all claim 1 GiB; the file holds 24 bytes of data."""
    _, meta, arrays = _valid(tmp_path)
    huge = 1 << 28
    meta = _edit(meta, "arrays", "array0", "shape", [huge])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (huge,)})
    path = tmp_path / "liar.npz"
    data = bytearray(_write(tmp_path / "rest.npz", meta, {k: v for k, v in arrays.items() if k != "array0"},
                            raw={"array0.npy": header.getvalue() + bytes(24)}).read_bytes())
    declared = (len(header.getvalue()) + 4 * huge).to_bytes(4, "little")
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        at = 0
        while (at := data.find(signature, at)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + 10] == b"array0.npy":
                data[at + offset:at + offset + 4] = declared
            at += 4
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("array0.npy").file_size == int.from_bytes(declared, "little")
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="member 'array0': declares .* compressed bytes in a file of"):
        graphopt.load_state_dict(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20


# -- fuzzing -----------------------------------------------------------------------------------


_FUZZ = {}


def _fuzz_source(tmp_path_factory):
    """The files both fuzz tests mutate, written by the first of them (the same whichever that is)."""
    if not _FUZZ:
        optimizer, _ = _optimizer_state(steps=2, generator=np.random.default_rng(5))
        folder = tmp_path_factory.mktemp("fuzz")
        for kind, state in (("optimizer", optimizer.state_dict()),
                            ("trainer", {"parameters": {"W": np.arange(4.0)}, "buffers": {"n": np.arange(3)},
                                         "optimizer": optimizer.state_dict()})):
            graphopt.save_state_dict(state, folder / f"{kind}.npz")
            _FUZZ[kind] = (state, (folder / f"{kind}.npz").read_bytes(), folder)
    return _FUZZ


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
)


def _mutate(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, at, value in mutations:
        at %= max(len(data), 1)
        if kind == "flip" and data:
            data[at] ^= value
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value])
        elif kind == "delete":
            del data[at:at + value]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["optimizer", "trainer"]), mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_fuzzed_files_load_equal_or_raise_checkpoint_error(tmp_path_factory, kind, mutations):
    state, data, folder = _fuzz_source(tmp_path_factory)[kind]
    path = folder / "mutated.npz"
    path.write_bytes(_mutate(data, mutations))
    try:
        loaded = graphopt.load_state_dict(path)
    except CheckpointError:
        return
    _assert_state_equal(loaded, state)


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3),
                     max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["optimizer", "trainer"]), choices=st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
       value=_json)
def test_fuzzed_metadata_loads_a_well_formed_state_or_raises_checkpoint_error(tmp_path_factory, kind, choices, value):
    state, data, folder = _fuzz_source(tmp_path_factory)[kind]
    meta = json.loads(np.load(io.BytesIO(data))["__meta__"].tobytes())
    arrays = {name[:-4]: np.load(io.BytesIO(data))[name[:-4]] for name in _members(io.BytesIO(data))
              if name != "__meta__.npy"}
    target, keys = meta, []
    for choice in choices:  # walk down to a random spot in the metadata and replace it by ``value``
        children = list(target) if isinstance(target, dict) else range(len(target)) if isinstance(target, list) else []
        if not children:
            break
        keys.append(children[choice % len(children)])
        if not isinstance(target[keys[-1]], (dict, list)):
            break
        target = target[keys[-1]]
    bad = _write(folder / "meta.npz", _edit(meta, *keys, value) if keys else value, arrays)
    try:
        loaded = graphopt.load_state_dict(bad)
    except CheckpointError:
        return
    optimizer_state = loaded["optimizer"] if kind == "trainer" else loaded
    for entry in optimizer_state["state"].values():
        assert type(entry["step"]) is int and entry["step"] >= 0
        assert all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for k, v in entry.items() if k != "step")
    for group in optimizer_state["param_groups"]:
        assert isinstance(group, dict) and all(type(i) is int for i in group["params"])


def test_the_optimizer_class_survives_a_file_and_another_class_is_refused(tmp_path):
    from graphopt import optim

    p = graphopt.Parameter(np.ones(3, np.float32), name="w")
    adam = optim.Adam([p], lr=0.1)
    p.grad = np.ones(3, np.float32)
    adam.step()
    path = tmp_path / "adam.npz"
    graphopt.save_state_dict(adam.state_dict(), path)
    loaded = graphopt.load_state_dict(path)
    assert loaded["class"] == "Adam"
    q = graphopt.Parameter(np.ones(3, np.float32), name="w")
    with pytest.raises(ValueError, match="AdamW"):
        optim.AdamW([q], lr=0.1).load_state_dict(loaded)
    r = graphopt.Parameter(np.ones(3, np.float32), name="w")
    optim.Adam([r], lr=0.1).load_state_dict(loaded)  # the same class loads
