"""The benchmarks in tools/ still run, and measure what they say they measure (tiny sizes, no timing asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from tools import bench, bench_kernels, rotating_grads, soak


def test_bench_steps_table_has_every_peer():
    results = bench.main(["--sections", "steps", "--sizes", "64K", "--tensors", "1,3", "--optimizers", "sgd,adam",
                          "--rounds", "2", "--steps", "1", "--no-memory"])
    rows = {(r["optimizer"], r["tensors"]): r["peers"] for r in results["steps"]}
    assert set(rows) == {("SGD momentum", 1), ("SGD momentum", 3), ("Adam", 1), ("Adam", 3)}
    for (_, tensors), peers in rows.items():
        assert {"graphopt", "numpy"} <= set(peers)
        assert ("graphopt-1-tensor" in peers) == (tensors > 1)
        assert all(0 < p["min_ms"] <= p["median_ms"] <= p["max_ms"] for p in peers.values())
    assert results["build_1000_tensors"]["build_and_compile_s"] > 0


def test_measure_runs_every_peer_untimed_then_timed_each_round():
    calls = {"a": 0, "b": 0, "c": 0}
    runs = {name: (lambda name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls}
    times = bench.measure(runs, rounds=3, steps=2, progress=lambda text: None)
    assert calls == {"a": 1 + 3 * 3, "b": 1 + 3 * 3, "c": 1 + 3 * 3}  # warm-up, then per round 1 untimed + 2
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_bench_optimizers_section_steps_every_optimizer_on_its_path():
    from tools.bench_optimizers import ENTRIES

    results = bench.main(["--sections", "optimizers", "--opt-size", "16K", "--opt-tensors", "2", "--rounds", "1",
                          "--steps", "1"])
    rows = results["optimizers"]["optimizers"]
    assert set(rows) == {e.name for e in ENTRIES}
    for entry in ENTRIES:
        assert rows[entry.name]["path"] == entry.path, entry.name
        assert rows[entry.name]["peers"]["graphopt"]["median_ms"] > 0


def test_kernel_bench_adam_body_is_adams_lazily_scaled_update():
    n, k = 4 * 1024, 1024
    rng = np.random.default_rng(0)
    buffers = {"p": rng.standard_normal(n, dtype=np.float32), "g": rng.standard_normal(n, dtype=np.float32),
               "m": rng.standard_normal(n, dtype=np.float32), "v": rng.random(n, dtype=np.float32)}
    p, g, m, v = (buffers[name].astype(np.float64) for name in "pgmv")
    c = bench_kernels.SCALARS
    m = m + c["c1"] * g
    v = v + c["c2"] * g * g
    p = p + c["a"] * m / (np.sqrt(v) + c["eps"])
    bench_kernels.row_run(bench_kernels.adam_body("graphopt-body"), buffers, k, threads=2)()
    for name, expected in (("p", p), ("m", m), ("v", v)):
        np.testing.assert_allclose(buffers[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_kernel_bench_ops_reports_every_operator():
    results = bench_kernels.bench_ops([1024], repeats=1)
    assert set(results) == set(bench_kernels.OPS)
    assert all(by_length[1024] > 0 for by_length in results.values())


def test_bench_zoo_times_graphopt_and_torch_eager():
    pytest.importorskip("torch")
    results = bench.main(["--sections", "zoo", "--zoo", "mlp,lenet", "--rounds", "1", "--steps", "1"])
    assert set(results["zoo"]) == {"mlp", "lenet"}
    for peers in results["zoo"].values():
        assert set(peers) == {"graphopt", "torch-eager"}
        assert all(p["median_ms"] > 0 for p in peers.values())


def test_rotating_gradients_tool_compiles_a_bounded_number_of_sessions():
    ms, sessions = rotating_grads.measure(tensors=12, size=16, width=2, steps=30)
    assert ms > 0 and sessions <= 5  # 54 steps over 12 patterns: the exact graphs, then the masked one


def test_soak_samples_resident_memory_and_trains(capsys):
    results = soak.main(["--steps", "60", "--trainer-steps", "40", "--params", "2000", "--samples", "4"])
    for phase, steps in (("optimizer", 60), ("trainer", 40)):
        trace = results[phase]["trace"]
        assert [t for t, _ in trace] == sorted({t for t, _ in trace}) and trace[0][0] == steps // 10
        assert trace[-1][0] == steps and len(trace) == 4
        assert all(rss > 1 for _, rss in trace)  # MiB: a Python process with numpy and onnxruntime loaded
        assert results[phase]["growth_mb"] == trace[-1][1] - trace[0][1]
    first, last = results["trainer"]["loss"]
    assert last < first  # the Trainer phase really trains
    assert "RSS" in capsys.readouterr().out


def test_soak_rss_reading_sees_an_allocation():
    before = soak.rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    assert soak.rss_mb() - before > 48
    del block


def test_soak_verdict_calls_growth_beyond_the_tolerance_a_leak():
    assert soak.verdict([(10, 100.0), (50, 101.0), (100, 103.0)], tolerance_mb=8) == (3.0, True)
    assert soak.verdict([(10, 100.0), (50, 110.0), (100, 120.0)], tolerance_mb=8) == (20.0, False)


@pytest.mark.xdist_group("processes")  # with the other multi-process tests (tests/test_distributed.py), in turn
def test_bench_scaling_quick_mode_times_one_and_two_processes(capsys):
    """The scaling tool's quick mode (the MLP, mpiexec) on 1 and 2 processes: every part of a step timed,
    the batches as asked, one gradient allreduce of the MLP's 4-byte parameters, a markdown row per run."""
    import os
    import shutil
    import sys
    import time

    pytest.importorskip("mpi4py")
    if not (shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")):
        pytest.skip("mpiexec not installed (pip install 'graphopt[distributed]')")
    from tools import bench_scaling

    start = time.perf_counter()
    results = bench_scaling.main(["--quick", "--procs", "1,2", "--project"])
    assert time.perf_counter() - start < 120  # ~20 s here when quiet, up to 60 s at load average 10 (3 imports)
    parameters = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10  # 784-1024-1024-10, weights and biases
    cores = bench_scaling.cores()
    for n in (1, 2):
        run = results["runs"][str(n)]
        assert run["world_size"] == n and run["threads"] == max(1, cores // n)
        model = run["models"]["mlp"]
        assert model["parameters"] == parameters and model["allreduce_alone_ms"] >= 0
        for mode, (batch, global_batch) in {"weak": (16, 16 * n), "strong": (32 // n, 32)}.items():
            row = model["modes"][mode]
            assert (row["batch_per_process"], row["global_batch"]) == (batch, global_batch)
            assert all(row[part] > 0 for part in ("accumulate_ms", "update_ms", "total_ms"))
            assert row["communication_ms"] >= 0 and row["accumulate_ms"] + row["update_ms"] <= row["total_ms"] * 1.5
            (grads,) = [s for s in row["allreduce_bytes"] if s > 2048]  # one bucket: < 32 MiB
            assert 4 * parameters <= grads < 4 * (parameters + 32768)  # the flat buffer: padded to whole rows
            assert 0 < row["efficiency"] < 2 * n and (n > 1 or row["efficiency"] == 1)
            overlapped = run["models"]["mlp, overlap 4 MiB"]["modes"][mode]  # the default --overlap off,4
            buckets = [s for s in overlapped["allreduce_bytes"] if s > 2048]
            assert len(buckets) == 2 and sum(buckets) == grads  # fc2 and fc1 (4 MiB and more), then fc0
            assert all(overlapped[part] > 0 for part in ("accumulate_ms", "update_ms", "total_ms"))
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mlp | weak") or
             line.startswith("| mlp | strong")]
    assert len(table) == 4 + 2 * 3 * 3  # 2 counts x 2 settings measured; 3 networks x 3 machine counts projected
    assert all(line.count("|") == table[0].count("|") for line in table[:4])


def test_bench_scaling_allreduce_model_is_thakur_rabenseifner_gropps():
    """Ring and Rabenseifner allreduce times: T = 2(p-1) a + 2(p-1)/p n b + (p-1)/p n g, and 2 log2(p) a for
    the latency of the latter; recursive doubling up to 2 KiB: log2(p) (a + n b + n g)."""
    from tools.bench_scaling import allreduce_time

    a, b, g, n = 1e-5, 1e-9, 2e-10, 1 << 20
    assert allreduce_time(n, 8, a, b, g, "ring") == pytest.approx(14 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g)
    assert allreduce_time(n, 8, a, b, g, "rabenseifner") == pytest.approx(6 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g)
    assert allreduce_time(2048, 8, a, b, g, "ring") == pytest.approx(3 * (a + 2048 * (b + g)))
    assert allreduce_time(n, 1, a, b, g, "ring") == 0


def test_bench_scaling_projection_loses_efficiency_with_machines_and_gains_with_bandwidth():
    from tools import bench_scaling

    row = {"batch_per_process": 64, "accumulate_ms": 40.0, "update_ms": 5.0, "allreduce_bytes": [32 << 20, 8, 64]}
    results = {"runs": {"1": {"models": {"m": {"parameters": 8 << 20, "gradient_bytes": 32 << 20, "add_ms": 4.0,
                                                 "modes": {"weak": row}}}}}}
    rows = bench_scaling.project(results, machines=(8, 64, 256))
    by = {(r["link"], r["machines"]): r for r in rows}
    for link in bench_scaling.LINKS:
        effs = [by[link.name, p]["efficiency_none"] for p in (8, 64, 256)]
        assert effs == sorted(effs, reverse=True) and all(0 < e < 1 for e in effs)
        for p in (8, 64, 256):
            r = by[link.name, p]
            assert r["efficiency_none"] <= r["efficiency_overlap"] and r["step_zero1_ms"] < r["step_none_ms"]
            assert r["compute_ms"] == 40.0  # weak scaling: the measured batch on every machine
    slow, fast = bench_scaling.LINKS[0].name, bench_scaling.LINKS[-1].name
    assert all(by[slow, p]["efficiency_none"] < by[fast, p]["efficiency_none"] for p in (8, 64, 256))


def test_bench_overlap_waits_the_rings_time_and_a_step_without_overlap_waits_all_of_it():
    """tools/bench_overlap.py on the MLP, 4 simulated machines on 1 Gb/s: each step waits the ring's time for
    exactly its allreduces, and a step that reduces after the backward pass waits all of it after the backward."""
    from tools import bench_overlap
    from tools.bench_scaling import allreduce_time

    rows = bench_overlap.main(["--models", "mlp", "--links", "1:100", "--machines", "4", "--buckets", "4",
                               "--batch", "8", "--steps", "1", "--warmup", "1", "--rounds", "1", "--threads", "1"])
    assert [r["bucket_mib"] for r in rows] == [None, 4.0]

    def ring_ms(*sizes):
        return 1e3 * sum(allreduce_time(s, 4, 100e-6, 1 / (1e9 / 8 * 0.9), 0.0, "ring") for s in sizes)

    fc0, fc1, fc2 = 4 * (784 * 1024 + 1024), 4 * (1024 * 1024 + 1024), 4 * (1024 * 10 + 10)
    padding = 4 * 32768 - (fc0 + fc1 + fc2) % (4 * 32768)  # the flat buffer holds whole rows of the update
    whole, overlapped = rows
    # batch size and loss, which tensors have gradients (6 and the weight, float64), the gradient buffer
    assert whole["link_ms"] == pytest.approx(ring_ms(16, 56, fc0 + fc1 + fc2 + padding), rel=1e-9)
    assert whole["communication_ms"] >= whole["link_ms"]  # without overlap every wait follows the backward pass
    assert whole["hidden"] == 0 and whole["total_ms"] >= whole["accumulate_ms"] + whole["link_ms"]
    # batch size; fc2 and fc1 (4 MiB and more), then fc0 with the padding; the loss
    assert overlapped["link_ms"] == pytest.approx(ring_ms(8, fc2 + fc1, fc0 + padding, 8), rel=1e-9)
