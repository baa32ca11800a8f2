"""Benchmarks (pytest-benchmark), behind the perf marker: `pytest -m perf --benchmark-enable -s`.

Speed is reported as ratios against references measured in the same process (the classic
NumPy loop, and the FLOP floor at the measured matmul rate), never asserted as a time."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

from bench import environment, store, sweep
from bench.spec import SweepSpec
from tests.conftest import PYTHON, REPO, run_env

pytestmark = pytest.mark.perf

CLASSIC_D = tuple(2**i for i in range(6, 11))
CLASSIC_N = tuple(2**i for i in range(2, 16))


def classic_numpy_loop(seed: int = 0) -> float:
    """The classic notebook: one cell at a time, numpy.linalg.pinv, mean cosine per cell."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for d in CLASSIC_D:
        for n in CLASSIC_N:
            K = rng.standard_normal((n, d), dtype=np.float32)
            V = rng.standard_normal((n, d), dtype=np.float32)
            R = K @ (np.linalg.pinv(K) @ V)
            cos = np.sum(R * V, axis=1) / (np.linalg.norm(R, axis=1) * np.linalg.norm(V, axis=1))
            total += float(cos.mean())
    return total


def test_classic_grid_against_numpy_and_the_flop_floor(benchmark, tmp_path):
    import jax

    rate = environment.matmul_gflops("float32")
    start = time.perf_counter()
    classic_numpy_loop()
    numpy_s = time.perf_counter() - start

    spec = SweepSpec(kernels=("pinv",), d=CLASSIC_D, n=CLASSIC_N, seeds=1, preset="benchmark")

    def ours():
        run_dir = store.new_run_dir(tmp_path / "runs")
        store.write_manifest(run_dir, {"run_id": run_dir.name, "spec": spec.to_dict()})
        sweep.run_sweep(spec, run_dir, progress=False)
        return run_dir

    # Cold: every program compiled here (the persistent cache starts empty and is filled).
    previous = jax.config.jax_compilation_cache_dir
    environment.enable_compile_cache(tmp_path / "cache")
    try:
        start = time.perf_counter()
        run_dir = benchmark.pedantic(ours, rounds=1, iterations=1)
        cold_s = time.perf_counter() - start
        # Warm: a second run of the same grid loads its programs from the persistent cache.
        start = time.perf_counter()
        warm_dir = ours()
        warm_s = time.perf_counter() - start
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    df = store.load_results(run_dir)
    assert (df["status"] == "ok").all() and len(df) == len(CLASSIC_D) * len(CLASSIC_N)
    warm = store.load_results(warm_dir)
    floor_s = df["flops"].sum() / (rate * 1e9)
    info = {"numpy_loop_s": numpy_s, "suite_cold_s": cold_s, "suite_warm_s": warm_s,
            "compile_cold_s": df["compile_s"].sum(), "compile_warm_s": warm["compile_s"].sum(),
            "run_s": df["run_s"].sum(), "speedup_cold": numpy_s / cold_s, "speedup_warm": numpy_s / warm_s,
            "matmul_gflops": rate, "flop_floor_s": floor_s, "run_over_floor": df["run_s"].sum() / floor_s}
    benchmark.extra_info.update(info)
    print("\nclassic grid (pinv, 1 seed):", json.dumps({k: round(v, 3) for k, v in info.items()}))


BIG_CELL = """
import json, resource, sys, time
from functools import partial
from bench.environment import configure_jax
configure_jax()
import jax, jax.numpy as jnp, kernels
d, n = 1024, 2**20
shape = kernels.CellShape("pinv", d, d, "gaussian", chunk=kernels.default_chunk(d, d))
seeds = jnp.arange(1, dtype=jnp.int32)
t0 = time.perf_counter()
compiled = jax.jit(partial(kernels.run_cell, shape)).lower(seeds, *kernels.cell_args(shape, 4, 0.0)).compile()
t1 = time.perf_counter()
out = jax.block_until_ready(compiled(seeds, *kernels.cell_args(shape, n, 0.0)))
t2 = time.perf_counter()
# VmHWM is this process's own peak; ru_maxrss would carry over the peak of the process that
# forked us (Linux keeps it across exec), i.e. pytest's.
try:
    peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"compile_s": t1 - t0, "run_s": t2 - t1, "flops": kernels.flops("pinv", n, d, d, 1024),
                  "cos_mean": float(out.cos_mean[0]), "theory": (d / n) ** 0.5, "peak_rss_gib": peak_kib / 2**20}))
"""


def test_d1024_n2e20_cell_time_and_peak_memory(benchmark):
    def run():
        done = subprocess.run([PYTHON, "-c", BIG_CELL], capture_output=True, text=True, env=run_env(), cwd=REPO,
                              timeout=1800)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    result["gflops"] = result["flops"] / result["run_s"] / 1e9
    benchmark.extra_info.update(result)
    print("\nd=1024, n=2^20 pinv cell:", json.dumps({k: round(v, 4) for k, v in result.items()}))
    assert abs(result["cos_mean"] - result["theory"]) < 0.002
    assert result["peak_rss_gib"] < 1.5
