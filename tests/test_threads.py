"""One optimizer or Trainer used from several threads: calls are serialized, none interleaved.

The property checked: N steps taken by several threads at once end exactly (bit for bit)
where N steps taken one after another end, and every snapshot taken meanwhile is the
state after some whole number of steps.
"""

from __future__ import annotations

import threading

import numpy as np

import graphopt
from graphopt import optim
from graphopt.runtime import Runtime
from tests.test_trainer import regression_model
from tests.test_trainer_features import linear_model  # here, not in a test: its generator is reseeded per test

THREADS, STEPS_EACH = 6, 20


def _in_threads(*work):
    """Run every callable of ``work`` on its own thread, started together; re-raise the first error."""
    start, errors = threading.Barrier(len(work)), []

    def run(job):
        start.wait()
        try:
            job()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _adam(seed=0):
    rng = np.random.default_rng(seed)
    params = [graphopt.Parameter(rng.standard_normal(s).astype(np.float32), name=f"w{i}")
              for i, s in enumerate([(64, 33), (5,), (300,)])]
    opt = optim.Adam(params, lr=0.01, weight_decay=0.1, runtime=Runtime(chunk_size=256, threads=2))
    for p in params:  # a constant gradient: every step is the same function of the state before it
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    return params, opt


def test_steps_from_threads_equal_the_same_steps_in_sequence():
    params, opt = _adam()
    sequential_params, sequential = _adam()
    _in_threads(*[lambda: [opt.step() for _ in range(STEPS_EACH)]] * THREADS)
    for _ in range(THREADS * STEPS_EACH):
        sequential.step()
    for p, q in zip(params, sequential_params):
        np.testing.assert_array_equal(p.data, q.data)
        state, expected = opt.state[p], sequential.state[q]
        assert state["step"] == expected["step"] == THREADS * STEPS_EACH
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(state[key], expected[key])


def test_trainer_steps_and_snapshots_from_threads():
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    trainer = graphopt.Trainer(regression_model(), loss="loss", optimizer=optim.Adam(lr=0.01))
    sequential = graphopt.Trainer(regression_model(), loss="loss", optimizer=optim.Adam(lr=0.01))
    after = [sequential.state_dict()]  # after[k]: the state after k steps, taken one after another
    for _ in range(4 * STEPS_EACH):
        sequential.step({"x": x, "t": t})
        after.append(sequential.state_dict())
    snapshots = []

    def snapshot():
        for _ in range(STEPS_EACH):
            snapshots.append(trainer.state_dict())

    _in_threads(*[lambda: [trainer.step({"x": x, "t": t}) for _ in range(STEPS_EACH)]] * 4, snapshot, snapshot)
    for state in [*snapshots, trainer.state_dict()]:
        steps = {entry["step"] for entry in state["optimizer"]["state"].values()} or {0}
        assert len(steps) == 1  # every parameter took the same number of steps
        expected = after[steps.pop()]
        for name, value in state["parameters"].items():
            np.testing.assert_array_equal(value, expected["parameters"][name])
        for index, entry in state["optimizer"]["state"].items():
            for key, value in entry.items():
                np.testing.assert_array_equal(value, expected["optimizer"]["state"][index][key])
    final = trainer.state_dict()["optimizer"]["state"]
    assert {entry["step"] for entry in final.values()} == {4 * STEPS_EACH}


def _training_model():
    from graphopt.training import losses

    trainer = graphopt.Trainer(linear_model(), losses.mse("y"), optim.Adam(lr=0.01))
    return trainer.export(kind="training_info")


def test_training_session_steps_from_threads_equal_the_same_steps_in_sequence():
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((8, 3)), "labels": rng.standard_normal((8, 4))}
    model = _training_model()
    session, sequential = graphopt.TrainingSession(model), graphopt.TrainingSession(model)
    _in_threads(*[lambda: [session.step(feeds) for _ in range(STEPS_EACH)]] * 4)
    for _ in range(4 * STEPS_EACH):
        sequential.step(feeds)
    assert set(session.state) == set(sequential.state)
    for name, value in sequential.state.items():
        np.testing.assert_array_equal(session.state[name], value, err_msg=name)


def test_functional_updates_from_threads_equal_the_same_updates_in_sequence():
    """Each thread updates its own arrays through the shared compiled graphs."""
    from graphopt.optim import functional

    rng = np.random.default_rng(3)
    init = [rng.standard_normal((7, 5)).astype(np.float32) for _ in range(THREADS)]
    grad = rng.standard_normal((7, 5)).astype(np.float32)

    def run(param):
        buffers = [None]
        for _ in range(STEPS_EACH):
            functional.sgd([param], [grad], buffers, weight_decay=0.01, momentum=0.9, lr=0.1, dampening=0,
                           nesterov=True, maximize=False)

    threaded, sequential = [a.copy() for a in init], [a.copy() for a in init]
    _in_threads(*[lambda p=p: run(p) for p in threaded])
    for p in sequential:
        run(p)
    for p, q in zip(threaded, sequential):
        np.testing.assert_array_equal(p, q)
