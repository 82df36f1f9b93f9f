"""The gradient allreduce overlapped with the backward pass (`graphopt.distributed.overlap`): the split of a
model into stages (`graphopt.training.stages`, `graphopt.runtime.staged`), the buckets, started collectives
(`Communicator.start`, `graphopt.distributed.progress`), and the overlapped data-parallel step, in one process
(a world of two whose peer mirrors this process) and on 2 and 4 processes (mpiexec, torch's gloo)."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import losses, optim
from graphopt.distributed import CommunicationError, Communicator, SingleProcess
from graphopt.distributed.overlap import gradient_buckets, in_backward_order
from graphopt.runtime import Runtime
from graphopt.runtime.staged import StagedExecutable
from graphopt.training import GradScaler, build_gradients
from graphopt.training.stages import StageSplitError, split_stages

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import distributed_worker as worker  # noqa: E402
from test_distributed import LAUNCHERS, _check, _check_batch_norm, _results, _succeeded, needs_mpi, needs_torch  # noqa: E402


class Mirror(Communicator):
    """A world of two whose other process holds this one's values: an allreduce doubles the buffer, so the
    weighted average (``g * n / 2n``, summed) is this process's own gradient, exactly. ``delay``: seconds each
    allreduce takes; ``fail_at``: the allreduce (counted from 1) that fails as a lost peer would; ``log``:
    (event, time) of every allreduce."""

    engine, rank, world_size = "mirror", 0, 2
    _failures = (ConnectionError,)

    def __init__(self, delay: float = 0.0, fail_at: int | None = None):
        self.delay, self.fail_at, self.log, self.calls = delay, fail_at, [], 0

    def _allreduce_sum(self, buffer: np.ndarray) -> None:
        self.calls += 1
        self.log.append((f"allreduce {buffer.nbytes}", time.monotonic(), threading.current_thread().name))
        if self.calls == self.fail_at:
            raise ConnectionError("Connection reset by peer")
        time.sleep(self.delay)
        buffer *= 2

    def _broadcast(self, buffer: np.ndarray, root: int) -> None:
        pass

    def _barrier(self) -> None:
        pass


def _data(batch: int = worker.BATCH):
    x, y, _ = worker.data(batch)
    return {"x": x}, y


def _trainer(batch_norm: bool = False, optimizer: str = "adamw", **options) -> graphopt.Trainer:
    return graphopt.Trainer(worker.mlp(100, batch_norm), losses.cross_entropy("logits"),
                            worker.make_optimizer(optimizer), **options)


def _gradient_model(batch_norm: bool = True):
    model, loss = losses.cross_entropy("logits").attach(worker.mlp(100, batch_norm))
    params = ["W1", "B1", "W2", "B2"] + (["gamma", "beta"] if batch_norm else [])
    buffers = ["mean", "var"] if batch_norm else []
    if batch_norm:
        model = graphopt.Trainer(worker.mlp(100, True), losses.cross_entropy("logits"), optim.SGD(lr=0.1))._train_model
    return build_gradients(model, loss, params, buffers), params, buffers


def _run_whole_and_staged(model: onnx.ModelProto, groups, feeds):
    runtime = Runtime(threads=1)
    whole = runtime.compile(model)
    staged = StagedExecutable(runtime, split_stages(model, groups))
    assert set(staged.input_names) == set(whole.input_names) and set(staged.output_names) == set(whole.output_names)
    results = []
    for executable in (whole, staged):  # fresh feeds: BatchNormalization writes into its running variance input
        outputs = {name: np.empty(_shape(model, name), np.float32) for name in whole.output_names}
        executable.run({name: value.copy() for name, value in feeds.items()}, outputs)
        results.append(outputs)
    return results


def _shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    inferred = onnx.shape_inference.infer_shapes(model).graph
    info = next(o for o in inferred.output if o.name == name)
    return tuple(d.dim_value for d in info.type.tensor_type.shape.dim)


# -- the split into stages ---------------------------------------------------------------------------------------

def test_each_stage_computes_its_group_and_the_stages_equal_the_whole_model():
    """The MLP with BatchNormalization's forward and backward, one stage per gradient in the backward pass's
    order: every node in exactly one stage (Constants may be copied), stage k outputs its group, forward values
    cross to the stages that need them, and the outputs equal the unsplit model's."""
    model, params, _ = _gradient_model()
    groups = [["W2.grad"], ["B2.grad"], ["gamma.grad", "beta.grad"], ["W1.grad"], ["B1.grad"]]
    split = split_stages(model, groups)
    assert len(split.stages) == len(groups)
    for stage, group in zip(split.stages, groups):
        assert set(group) <= set(stage.finals)
    assert split.stages[0].received == () and "loss" in split.stages[0].finals
    placed = [n.output[0] for stage in split.stages for n in stage.model.graph.node if n.op_type != "Constant"]
    assert sorted(placed) == sorted(n.output[0] for n in model.graph.node if n.op_type != "Constant")
    assert any(stage.received for stage in split.stages[1:])  # saved activations cross from the forward stage
    feeds = {"x": worker.data()[0], "labels": worker.data()[1],
             **{t.name: numpy_helper.to_array(t) for t in worker.mlp(100, True).graph.initializer}}
    whole, staged = _run_whole_and_staged(model, groups, feeds)
    for name in whole:
        np.testing.assert_array_equal(staged[name], whole[name], err_msg=name)


def _chain_model() -> onnx.ModelProto:
    """``o = (x @ A) @ F @ B`` with ``F`` a frozen initializer, read by the forward pass and by ``A``'s gradient."""
    rng = np.random.default_rng(3)
    weights = {name: rng.standard_normal((4, 4)).astype(np.float32) for name in ("A", "F", "B")}
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "F"], ["g"]),
             helper.make_node("MatMul", ["g", "B"], ["o"]), helper.make_node("ReduceSumSquare", ["o"], ["loss"],
                                                                                keepdims=0)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_an_initializer_several_stages_read_is_fed_once_and_the_gradients_match_the_formula():
    """``F`` is read by stage 0 (forward) and stage 1 (``A``'s gradient): it becomes an input of both, fed from
    one array, and left out of both models' initializers; the gradients are the formula's:
    ``dL/dB = g^T 2o``, ``dL/dA = x^T (2o B^T F^T)``."""
    chain = _chain_model()
    model = build_gradients(chain, "loss", ["A", "B"])
    split = split_stages(model, [["B.grad"], ["A.grad"]])
    assert set(split.shared) == {"F"}
    assert all("F" not in {t.name for t in s.model.graph.initializer} for s in split.stages)
    assert all(s.shared == ("F",) for s in split.stages)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in chain.graph.initializer}
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    feeds = {"x": x, "A": w["A"].astype(np.float32), "B": w["B"].astype(np.float32)}
    _, staged = _run_whole_and_staged(model, [["B.grad"], ["A.grad"]], feeds)
    h = x.astype(np.float64) @ w["A"]
    g = h @ w["F"]
    o2 = 2 * (g @ w["B"])
    np.testing.assert_allclose(staged["B.grad"], g.T @ o2, rtol=1e-5)
    np.testing.assert_allclose(staged["A.grad"], x.T @ (o2 @ w["B"].T @ w["F"].T), rtol=1e-5)


def test_a_subgraph_reading_an_earlier_stages_value_receives_it():
    """An If in stage 1 whose branches read ``v``, computed in stage 0: ``v`` crosses as an input of stage 1."""
    then = helper.make_graph([helper.make_node("Add", ["v", "v"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])])
    other = helper.make_graph([helper.make_node("Neg", ["v"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])])
    nodes = [helper.make_node("Relu", ["x"], ["v"]), helper.make_node("Exp", ["v"], ["first"]),
             helper.make_node("If", ["c"], ["second"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "branching", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
                                                   helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("first", TensorProto.FLOAT, [3]),
                               helper.make_tensor_value_info("second", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    split = split_stages(model, [["first"], ["second"]])
    assert split.stages[1].received == ("v",) and split.stages[0].passed == ("v",)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    for c in (True, False):
        whole, staged = _run_whole_and_staged(model, [["first"], ["second"]], {"x": x, "c": np.array(c)})
        np.testing.assert_array_equal(staged["second"], 2 * np.maximum(x, 0) if c else -np.maximum(x, 0))
        np.testing.assert_array_equal(staged["first"], whole["first"])


def test_groups_must_name_distinct_outputs():
    model, _, _ = _gradient_model(batch_norm=False)
    with pytest.raises(ValueError, match="group 1 names 'W9.grad', which is not an output"):
        split_stages(model, [["W2.grad"], ["W9.grad"]])
    with pytest.raises(ValueError, match="'W2.grad' is in more than one group"):
        split_stages(model, [["W2.grad"], ["W2.grad", "B2.grad"]])


def test_a_sequence_cannot_cross_between_stages():
    nodes = [helper.make_node("SequenceConstruct", ["x", "x"], ["seq"]),
             helper.make_node("SequenceAt", ["seq", "zero"], ["first"]),
             helper.make_node("SequenceLength", ["seq"], ["length"])]
    graph = helper.make_graph(nodes, "sequences", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("first", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("length", TensorProto.INT64, [])],
                              [numpy_helper.from_array(np.array(0, np.int64), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(StageSplitError, match="'seq' would cross between stages, and its type is a sequence"):
        split_stages(model, [["first"], ["length"]])
    assert len(split_stages(model, [["first", "length"]]).stages) == 1


def test_a_model_that_cannot_be_cut_trains_in_one_stage_with_a_warning(monkeypatch):
    """Where the cut fails, the trainer warns, runs one stage completing every bucket, and trains as before."""
    from graphopt.distributed import overlap

    def refuse_cuts(model, groups):
        if len(groups) > 1:
            raise StageSplitError("split_stages: 'h' would cross between stages, and its type is a sequence")
        return split_stages(model, groups)

    monkeypatch.setattr(overlap, "split_stages", refuse_cuts)
    inputs, labels = _data()
    plain, overlapped = _trainer(), _trainer(communicator=Mirror(), bucket_bytes=1, overlap=True)
    with pytest.warns(RuntimeWarning, match="reduction cannot overlap the backward pass of this model: .*'h' would"):
        overlapped.step(inputs, labels)
    plain.step(inputs, labels)
    assert [len(c) for c in overlapped._gradient_executable().completes] == [4]  # noqa: SLF001
    for name, p in plain.parameters.items():
        np.testing.assert_array_equal(overlapped.parameters[name].data, p.data, err_msg=name)


# -- buckets ---------------------------------------------------------------------------------------------------

def test_buckets_cover_each_flat_buffer_once_from_its_end_in_the_backward_passs_order():
    trainer = _trainer()
    names_of = {id(p): name for name, p in trainer.parameters.items()}
    flat = trainer.optimizer._flats[0][0]  # noqa: SLF001
    sizes = {name: p.size * 4 for name, p in trainer.parameters.items()}  # W1 160, B1 32, W2 96, B2 12 bytes
    buckets = gradient_buckets(trainer.optimizer, names_of, 100)
    assert [b.grads for b in buckets] == [("W2.grad", "B2.grad"), ("W1.grad", "B1.grad")]
    assert all(sum(sizes[g[:-5]] for g in b.grads) >= 100 for b in buckets)
    views = [b.view(trainer.optimizer) for b in buckets]
    assert sum(v.size for v in views) == flat.grads.size  # the padding joins the last bucket
    assert all(np.shares_memory(v, flat.grads) for v in views)
    model = build_gradients(trainer._train_model, trainer.loss, list(trainer.parameters))  # noqa: SLF001
    every = gradient_buckets(trainer.optimizer, names_of, 1)
    assert [b.grads for b in in_backward_order(model, every)] == [("W2.grad",), ("B2.grad",), ("W1.grad",),
                                                                  ("B1.grad",)]


# -- started collectives -----------------------------------------------------------------------------------------

def test_started_and_blocking_collectives_run_in_the_order_called():
    comm = Mirror(delay=0.02)
    first, second = np.ones(3, np.float32), np.full(5, 2.0, np.float32)
    requests = [comm.allreduce_async(first), comm.allreduce_async(second)]
    blocking = comm.allreduce(np.ones(7, np.float64))  # waits for the two started before it
    assert all(r.done() for r in requests)
    assert [event for event, _, _ in comm.log] == ["allreduce 12", "allreduce 20", "allreduce 56"]
    assert [thread for _, _, thread in comm.log[:2]] == ["graphopt-mirror-progress"] * 2
    for request in requests:
        request.wait()
    np.testing.assert_array_equal(first, 2)
    np.testing.assert_array_equal(second, 4)
    np.testing.assert_array_equal(blocking, 2)
    comm.close()


def test_after_a_failed_started_collective_nothing_more_runs():
    comm = Mirror(fail_at=1)
    untouched = np.ones(4, np.float32)
    failed, queued = comm.allreduce_async(np.ones(2, np.float32)), comm.allreduce_async(untouched)
    with pytest.raises(CommunicationError, match="allreduce of 8 bytes failed on rank 0 of 2 .*lost"):
        failed.wait()
    with pytest.raises(CommunicationError):
        queued.wait()
    with pytest.raises(CommunicationError, match="barrier of 0 bytes failed.*ConnectionError: Connection reset"):
        comm.barrier()
    assert comm.calls == 1 and np.array_equal(untouched, np.ones(4))
    comm.close()


def test_a_world_of_one_runs_started_work_at_once():
    comm, ran = SingleProcess(), []
    request = comm.start(lambda: ran.append(1))
    assert ran == [1] and request.done()
    request.wait()


# -- the overlapped step in one process --------------------------------------------------------------------------

@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_overlapped_step_equals_the_plain_trainer(optimizer, batch_norm):
    """A world of two holding the same shard twice trains exactly as one process: every tensor its own bucket
    and stage (the weighted average of equal gradients is the gradient; running statistics likewise)."""
    inputs, labels = _data()
    plain, overlapped = _trainer(batch_norm, optimizer), _trainer(batch_norm, optimizer, communicator=Mirror(),
                                                                  bucket_bytes=1, overlap=True)
    assert overlapped.overlap and len(overlapped._gradient_executable().completes) == 4 + 2 * batch_norm  # noqa: SLF001
    for _ in range(3):
        assert overlapped.step(inputs, labels) == plain.step(inputs, labels)
    for name, p in plain.parameters.items():
        np.testing.assert_array_equal(overlapped.parameters[name].data, p.data, err_msg=name)
    for name, value in plain.buffers.items():
        np.testing.assert_array_equal(overlapped.buffers[name], value, err_msg=name)


def test_overlap_with_a_grad_scaler_and_after_accumulate():
    """With a GradScaler the staged gradients are of the scaled loss and are unscaled by the eager step; a step
    after `accumulate` sums both batches and averages whole buffers (not overlapped): both as one process."""
    inputs, labels = _data()
    plain = _trainer(grad_scaler=GradScaler(init_scale=2.0 ** 10))
    overlapped = _trainer(grad_scaler=GradScaler(init_scale=2.0 ** 10), communicator=Mirror(), bucket_bytes=64,
                          overlap=True)
    for trainer in (plain, overlapped):
        trainer.accumulate(inputs, labels)
        trainer.step(inputs, labels)
        trainer.step(inputs, labels)
    for name, p in plain.parameters.items():
        np.testing.assert_allclose(overlapped.parameters[name].data, p.data, rtol=1e-6, atol=1e-7, err_msg=name)
    assert overlapped.grad_scaler.get_scale() == plain.grad_scaler.get_scale()


def test_buckets_are_reduced_while_later_stages_compute():
    """Each stage after the first takes 30 ms (a session that sleeps after running): the first bucket's
    allreduce starts on the progress thread before the last stage ends."""
    comm = Mirror(delay=0.005)
    trainer = _trainer(communicator=comm, bucket_bytes=1, overlap=True)
    staged = trainer._gradient_executable()  # noqa: SLF001
    ended = []
    for k, executable in enumerate(staged.executables):
        executable.session = _SlowSession(executable.session, 0.03 if k else 0.0, ended, k)
    trainer.step(*_data())
    first_bucket = next(t for event, t, thread in comm.log if thread == "graphopt-mirror-progress" and
                        event != "allreduce 8")  # after the batch sizes' sum (one float64)
    assert first_bucket < ended[-1][1], (comm.log, ended)
    comm.close()


class _SlowSession:
    def __init__(self, session, seconds: float, ended: list, k: int):
        self._session, self._seconds, self._ended, self._k = session, seconds, ended, k

    def io_binding(self):
        return self._session.io_binding()

    def run_with_iobinding(self, binding):
        self._session.run_with_iobinding(binding)
        time.sleep(self._seconds)
        self._ended.append((self._k, time.monotonic()))


@pytest.mark.parametrize("overlap", [True, False])
def test_a_failed_allreduce_changes_no_parameter_state_or_running_statistic(overlap):
    """After a step, the next one's third allreduce fails (overlapped: bucket 1, after the batch sizes' sum and
    bucket 0; not: the whole buffer's, after the sizes and loss, and the presence check): parameters, optimizer
    state and running statistics stay as they were, the gradients are dropped; the error names the lost peer."""
    inputs, labels = _data()
    per_step = 1 + 6 + 2 if overlap else 4  # sizes, 6 buckets, loss, statistics; or sizes, presence, buffer, stats
    comm = Mirror(fail_at=per_step + 3)
    trainer = _trainer(True, communicator=comm, bucket_bytes=1, overlap=overlap)
    trainer.step(inputs, labels)
    assert comm.calls == per_step
    before = {name: p.data.copy() for name, p in trainer.parameters.items()}
    buffers = {name: value.copy() for name, value in trainer.buffers.items()}
    state = trainer.optimizer.state_dict()["state"]
    with pytest.raises(CommunicationError, match="Connection reset by peer.*probably died"):
        trainer.step(inputs, labels)
    for name, p in trainer.parameters.items():
        np.testing.assert_array_equal(p.data, before[name])
        assert p.grad is None
    for name, value in trainer.buffers.items():
        np.testing.assert_array_equal(value, buffers[name])
    after = trainer.optimizer.state_dict()["state"]
    assert after.keys() == state.keys() and state
    for key, slots in state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(after[key][slot], value, err_msg=f"{key} {slot}")


def test_overlap_settings_are_checked():
    with pytest.raises(ValueError, match="overlap=True needs a communicator"):
        _trainer(overlap=True)
    with pytest.raises(ValueError, match="bucket_bytes must be a positive number of bytes, got 0"):
        _trainer(communicator=Mirror(), bucket_bytes=0)
    with pytest.raises(ValueError, match="overlap must be True, False or None"):
        _trainer(communicator=Mirror(), overlap="yes")
    assert not _trainer(communicator=SingleProcess()).overlap
    assert not _trainer(communicator=Mirror(), overlap=False).overlap
    default = _trainer(communicator=Mirror())
    assert default.overlap and default.bucket_bytes == 4 << 20


# -- processes ----------------------------------------------------------------------------------------------------

@pytest.mark.xdist_group("processes")  # with the other multi-process tests (tests/test_distributed.py), in turn
@pytest.mark.parametrize("engine, n", [pytest.param("mpi", 2, marks=needs_mpi), pytest.param("mpi", 4, marks=needs_mpi),
                                       pytest.param("torch", 2, marks=needs_torch)])
def test_overlapped_processes_equal_one_process_on_the_whole_batch(tmp_path, engine, n):
    """A bucket and stage per tensor, on shards of a batch of 15 (unequal): SGD-momentum and AdamW equal the
    whole batch in one process to float32 rounding, identical on every rank; so does the step without overlap;
    BatchNormalization's running statistics as in tests/test_distributed.py."""
    cases = ["staged-sgd", "staged-adamw", "whole-sgd", "bnstaged-sgd"]
    _succeeded(LAUNCHERS[engine](n, [str(tmp_path), engine, *cases]))
    for case in cases[:3]:
        optimizer = case.split("-")[1]
        batch = worker.BATCH - (case.startswith("staged"))
        reference = worker.trainer_run(SingleProcess(), optimizer, batch=batch)
        _check(case, _results(tmp_path, case, n, engine), reference)
    _check_batch_norm(_results(tmp_path, "bnstaged-sgd", n, engine), n)
