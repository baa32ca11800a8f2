"""Benchmarks (pytest-benchmark), behind the perf marker: `pytest -m perf -n 0 --benchmark-enable -s`.

Speed is reported as ratios against references measured in the same process (the classic
NumPy loop, and the FLOP floor at the measured matmul rate), never asserted as a time."""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from bench import environment, store
from tests.conftest import PYTHON, REPO, run_env

pytestmark = pytest.mark.perf


@pytest.fixture(autouse=True)
def _alone():
    """Timings beside another test worker measure the contention, not the code."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("benchmarks run alone: pytest -m perf -n 0 --benchmark-enable -s")

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


def _suite_process(out, cache) -> float:
    """Wall time of the whole `python run_all.py` process on the classic grid (start-up included)."""
    command = [PYTHON, "run_all.py", "--kernels", "pinv", "--d", "2^6..2^10", "--n", "2^2..2^15", "--seeds", "1",
               "--no-report", "--out", str(out), "--compile-cache", str(cache)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=1200)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    return wall


def floor_bound(d: int, ns, *, keep: bool, repeats: int) -> dict:
    """bench.floor_bound in a process of its own: the least time a cell of d and each n can
    take here (the draws and the floor's products, nothing else), beside its floor."""
    command = [PYTHON, "-m", "bench.floor_bound", str(d), ",".join(map(str, ns)), "--repeats", str(repeats)]
    done = subprocess.run(command + (["--keep"] if keep else []), capture_output=True, text=True, env=run_env(),
                          cwd=REPO, timeout=1200)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_classic_grid_against_numpy_and_the_flop_floor(benchmark, tmp_path):
    """Target 1 and 2 of the speed issue: the whole run_all.py process on the classic grid, cold
    (empty compile cache) and warm, beside the NumPy pinv loop in this process, interleaved,
    best of two each; run time against the FLOP floor at the matmul rate measured here."""
    rate = environment.matmul_gflops("float32")
    numpy_s, cold_s, warm_s = [], [], []
    for round_ in range(2):
        start = time.perf_counter()
        classic_numpy_loop()
        numpy_s.append(time.perf_counter() - start)
        cache = tmp_path / f"cache{round_}"
        cold_s.append(_suite_process(tmp_path / f"cold{round_}", cache))
        warm_s.append(_suite_process(tmp_path / f"warm{round_}", cache))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    run_dir = next((tmp_path / "cold1").iterdir())
    df = store.load_results(run_dir)
    manifest = store.read_manifest(run_dir)
    assert (df["status"] == "ok").all() and len(df) == len(CLASSIC_D) * len(CLASSIC_N)
    floor_s = df["flops"].sum() / (rate * 1e9)
    info = {"numpy_loop_s": min(numpy_s), "suite_cold_s": min(cold_s), "suite_warm_s": min(warm_s),
            "speedup_cold": min(numpy_s) / min(cold_s), "speedup_warm": min(numpy_s) / min(warm_s),
            "compile_s": df["compile_s"].sum(), "compile_per_family_s": df["compile_s"].sum() / len(CLASSIC_D),
            "compile_wait_s": manifest["compile_wait_s"], "run_s": df["run_s"].sum(), "matmul_gflops": rate,
            "flop_floor_s": floor_s, "run_over_floor": df["run_s"].sum() / floor_s}
    # The least these cells can take here (pairs kept, as the sweep keeps them): the grid's bound
    # against its floor, each family's in a process of its own at the rate measured there.
    bounds = [cell for d in CLASSIC_D for cell in floor_bound(d, CLASSIC_N, keep=True, repeats=3)["cells"]]
    info["bound_s"] = sum(cell["bound_s"] for cell in bounds)
    info["bound_over_floor"] = info["bound_s"] / sum(cell["floor_s"] for cell in bounds)
    info["run_over_bound"] = info["run_s"] / info["bound_s"]
    benchmark.extra_info.update(info)
    print("\nclassic grid (pinv, 1 seed, whole process):", json.dumps({k: round(v, 3) for k, v in info.items()}))


BIG_CELL = """
import json, resource, sys, time
from functools import partial
from bench.environment import configure_jax
configure_jax()
from bench.environment import matmul_gflops
rate = matmul_gflops()
import jax, jax.numpy as jnp, kernels
from kernels.streams import new_cache
from bench import sweep
from bench.spec import Cell
d, n = 1024, 2**20
# The family the sweep would run this cell in: its cache holds what the sweep's budget allows.
keep = sweep.keep_pairs(Cell("pinv", d, n, d, 0.0, "gaussian", "float32"), n, 1, sweep.KEEP_BYTES)
shape = kernels.MatrixFamily("pinv", d, d, "gaussian", chunk=kernels.default_chunk(d, d), keep=keep)
seeds = jnp.arange(1, dtype=jnp.int32)
t0 = time.perf_counter()
compiled = jax.jit(kernels.matrix_cell_program(shape), donate_argnums=1).lower(
    seeds, new_cache(shape, 1), *kernels.matrix_args(shape, 4, 0.0)).compile()
t1 = time.perf_counter()
out, _ = compiled(seeds, new_cache(shape, 1), *kernels.matrix_args(shape, n, 0.0))
out = jax.block_until_ready(out)
t2 = time.perf_counter()
# VmHWM is this process's own peak; ru_maxrss would carry over the peak of the process that
# forked us (Linux keeps it across exec), i.e. pytest's.
try:
    peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# An accelerator's own peak (None where the backend keeps no statistics, as on a CPU).
stats = jax.local_devices()[0].memory_stats() or {}
print(json.dumps({"device_peak_gib": stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None,
                  "compile_s": t1 - t0, "run_s": t2 - t1, "flops": kernels.matrix_flops("pinv", n, d, d, 1024),
                  "matmul_gflops": rate,
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
    result["run_over_floor"] = result["run_s"] / (result["flops"] / (result["matmul_gflops"] * 1e9))
    # The least this cell can take here: its pairs (8 GiB) cannot be kept under 1 GiB, so they
    # are drawn for the write and again for the recall; the bound program does those draws and
    # the floor's products, nothing else (bench.floor_bound).
    bound = floor_bound(1024, [2**20], keep=False, repeats=1)["cells"][0]
    result.update({"bound_s": bound["bound_s"], "bound_over_floor": bound["bound_over_floor"],
                   "products_over_floor": bound["products_over_floor"], "run_over_bound": result["run_s"] / bound["bound_s"]})
    benchmark.extra_info.update(result)
    print("\nd=1024, n=2^20 pinv cell:", json.dumps({k: v if v is None else round(v, 4) for k, v in result.items()}))
    assert abs(result["cos_mean"] - result["theory"]) < 0.002
    if result["device_peak_gib"] is None:  # the device's memory is the host's
        assert result["peak_rss_gib"] < 1.5
    else:  # the host holds CUDA's libraries (3.4 GiB on the H100 machine), the device the cell
        assert result["device_peak_gib"] < 1.0


def _numpy_fuzzy(unit_vocab, keys, values, queries, k, beta=1.0, block=1000):
    """The straightforward NumPy store: attention, then cosine against the whole vocabulary."""
    s = beta * queries @ keys.T
    w = np.exp(s - s.max(axis=1, keepdims=True))
    out = (w / w.sum(axis=1, keepdims=True)) @ values
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    ids = []
    for start in range(0, len(out), block):
        scores = out[start:start + block] @ unit_vocab.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        ids.append(np.take_along_axis(top, order, 1))
    return np.concatenate(ids)


def test_fuzzy_store_throughput_and_latency(benchmark):
    from fuzzy_kv import DEMO_RECORDS, Database, Embeddings

    emb = Embeddings.glove()
    db = Database(DEMO_RECORDS, embeddings=emb)
    rng = np.random.default_rng(0)
    words = [emb.words[i] for i in rng.integers(0, 100_000, 10_000)]
    rate = environment.matmul_gflops("float32")
    db.query_many(words)  # compile the batched program for this batch shape (warm-up)
    start = time.perf_counter()
    ours = benchmark.pedantic(lambda: db.query_many(words, 5), rounds=1, iterations=1)
    ours_s = time.perf_counter() - start

    unit = np.asarray(emb.unit)
    keys = np.stack([emb.vector(k) for k in DEMO_RECORDS])
    values = np.stack([emb.vector(v) for v in DEMO_RECORDS.values()])
    queries = np.stack([emb.vector(w) for w in words])
    start = time.perf_counter()
    ref = _numpy_fuzzy(unit, keys, values, queries, 5)
    numpy_s = time.perf_counter() - start
    agree = np.mean([a == [emb.words[i] for i in r] for a, r in zip(ours, ref)])

    latencies = []
    for w in words[:200]:
        t = time.perf_counter()
        db.query(w)
        latencies.append(time.perf_counter() - t)
    flops = 2 * len(words) * len(emb) * (emb.dim + 1)
    info = {"query_many_10k_s": ours_s, "numpy_10k_s": numpy_s, "speedup_vs_numpy": numpy_s / ours_s,
            "gflops": flops / ours_s / 1e9, "matmul_gflops": rate, "of_matmul": flops / ours_s / 1e9 / rate,
            "single_query_p50_ms": 1e3 * float(np.median(latencies)),
            "single_query_p90_ms": 1e3 * float(np.percentile(latencies, 90)), "agreement_with_numpy": agree}
    benchmark.extra_info.update(info)
    print("\nfuzzy store, 10k queries over 400k words:", json.dumps({k: round(v, 3) for k, v in info.items()}))
    assert agree > 0.999  # the same top-5 words (ties aside)


ATTENTION_PEAK = """
import json, sys
import numpy as np, jax, jax.numpy as jnp
from kernels.attention import recall
which, q, n, d = sys.argv[1], *map(int, sys.argv[2:5])
rng = np.random.default_rng(0)
Q, K, V = (jnp.asarray(rng.standard_normal(s, np.float32)) for s in ((q, d), (n, d), (n, d)))
base = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
if which == "blockwise":
    out = recall(Q, K, V, similarity="scaled_dot")
else:
    out = jax.jit(lambda Q, K, V: jax.nn.softmax(Q @ K.T / jnp.sqrt(1.0 * d), axis=-1) @ V)(Q, K, V)
out.block_until_ready()
peak = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
print(json.dumps({"peak_gib": peak / 2**20, "inputs_loaded_gib": base / 2**20}))
"""


def _attention_peak(which: str, q: int, n: int, d: int) -> dict:
    done = subprocess.run([PYTHON, "-c", ATTENTION_PEAK, which, str(q), str(n), str(d)], capture_output=True, text=True,
                          env=run_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_blockwise_attention_against_dot_product_attention_and_naive(benchmark):
    """q = n = 16384, d = 256, softmax (scaled dot): ours, jax.nn.dot_product_attention (layout
    batch, length, heads, head_dim) and a naive jnp version that materialises the scores, all
    in this process, against the measured matmul rate."""
    import jax
    import jax.numpy as jnp

    from kernels.attention import recall

    q = n = 16384
    d = 256
    rng = np.random.default_rng(0)
    Q, K, V = (jnp.asarray(rng.standard_normal((rows, d), np.float32)) for rows in (q, n, n))
    flops = 4.0 * q * n * d  # scores and blend, multiply-add = 2
    rate = environment.matmul_gflops("float32")
    naive = jax.jit(lambda Q, K, V: jax.nn.softmax(Q @ K.T / jnp.sqrt(1.0 * d), axis=-1) @ V)
    dpa = jax.jit(lambda Q, K, V: jax.nn.dot_product_attention(Q[None, :, None], K[None, :, None],
                                                               V[None, :, None])[0, :, 0])
    ours = jax.jit(lambda Q, K, V: recall(Q, K, V, similarity="scaled_dot"))

    def best_of(fn, reps=3):
        fn(Q, K, V).block_until_ready()  # compile and warm up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn(Q, K, V).block_until_ready()
            times.append(time.perf_counter() - start)
        return min(times)

    naive_s, dpa_s = best_of(naive), best_of(dpa)
    ours(Q, K, V).block_until_ready()
    times = []

    def timed():
        start = time.perf_counter()
        ours(Q, K, V).block_until_ready()
        times.append(time.perf_counter() - start)

    benchmark.pedantic(timed, rounds=3, iterations=1)
    ours_s = min(times)
    reference = np.asarray(naive(Q, K, V), np.float64)
    got = np.asarray(ours(Q, K, V), np.float64)
    np.testing.assert_allclose(got, np.asarray(dpa(Q, K, V)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    peak_ours, peak_naive = _attention_peak("blockwise", q, n, d), _attention_peak("naive", q, n, d)
    info = {"ours_s": ours_s, "dot_product_attention_s": dpa_s, "naive_s": naive_s,
            "ours_gflops": flops / ours_s / 1e9, "dpa_gflops": flops / dpa_s / 1e9, "naive_gflops": flops / naive_s / 1e9,
            "matmul_gflops": rate, "ours_of_matmul": flops / ours_s / 1e9 / rate, "speedup_vs_dpa": dpa_s / ours_s,
            "peak_gib_ours": peak_ours["peak_gib"], "peak_gib_naive": peak_naive["peak_gib"]}
    benchmark.extra_info.update(info)
    print("\nsoftmax attention q = n = 16384, d = 256:", json.dumps({k: round(v, 3) for k, v in info.items()}))
    # Bounded memory: the (q, n) float32 scores alone are 1 GiB; ours holds O(block^2) beside the inputs.
    assert peak_ours["peak_gib"] - peak_ours["inputs_loaded_gib"] < 0.25


def test_default_run_wall_time(benchmark, tmp_path):
    """Target 4 of the speed issue: the default `python run_all.py` (every memory on the classic
    grid, 3 seeds, hallucination curve, figures and report), whole process, cold compile cache."""
    command = [PYTHON, "run_all.py", "--out", str(tmp_path / "runs"), "--compile-cache", str(tmp_path / "cache")]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=1800)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    run_dir = next((tmp_path / "runs").iterdir())
    df = store.load_results(run_dir)
    manifest = store.read_manifest(run_dir)
    # The same grid and rows as before the speed work: 8 memory settings x 70 cells x 3 seeds.
    assert len(df) == 1680 and set(df["status"]) <= {"ok", "skipped"}
    assert (df["status"] == "skipped").sum() == 30  # top-8 at n = 4
    info = {"wall_s": wall, "compile_s": df["compile_s"].sum(), "compile_wait_s": manifest["compile_wait_s"],
            "run_s": df["run_s"].sum(), "families": manifest["compiled_programs"],
            "run_matrix_s": df.loc[df.kernel != "attention", "run_s"].sum(),
            "run_attention_s": df.loc[df.kernel == "attention", "run_s"].sum()}
    benchmark.extra_info.update(info)
    print("\ndefault run:", json.dumps({k: round(v, 2) for k, v in info.items()}))


NESTED_READ = """
import time, json, sys
from bench.environment import configure_jax, matmul_gflops
configure_jax()
import jax, jax.numpy as jnp, numpy as np
from kernels import nested as kn
from kernels.attention import recall
from bench.benchmarks import full_tree
L, B, d, Q = 4, 32, 64, 4096
which = sys.argv[1] if len(sys.argv) > 1 else "all"
levels, paths, lengths, target = full_tree(L, B, d, Q)
path = np.asarray(paths)
rate = matmul_gflops()
def timeit(f, reps=2):
    out = f(); jax.block_until_ready(out)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); out = f(); jax.block_until_ready(out); best = min(best, time.perf_counter() - t)
    return best, out
res = {"matmul_gflops": rate}
def acc(out):
    out = np.asarray(out); V = np.asarray(levels[-1].values).reshape(-1, d)
    cos = np.sum(out * target, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(target, axis=1)
    return float(cos.mean())
slots = sum(B**(l+1) for l in range(L))
if which in ("all", "topk"):
    t, r = timeit(lambda: kn.read(levels, paths, lengths, mode="topk", k=4, beta=8.0))
    res["topk4_s"] = t; res["topk4_cos"] = acc(r.values)
if which in ("all", "soft"):
    t, r = timeit(lambda: kn.read(levels, paths, lengths, mode="soft", beta=8.0), reps=2)
    flops = Q * (2 * slots * d + 2 * B**L * d)
    # the best matmul rate before and after: one measurement swings 150-300 GFLOP/s here, and
    # a low one would flatter the ratio
    best = max(rate, matmul_gflops())
    res["matmul_gflops"] = best
    res["soft_s"] = t; res["soft_cos"] = acc(r.values); res["soft_of_floor"] = t / (flops / best / 1e9)
if which in ("all", "flat"):
    # composite keys: sum of level keys along every leaf path
    K = np.zeros((B**L, d), np.float32); idx = np.arange(B**L)
    for l in range(L):
        nodes = idx // B**(L - l)  # node at level l
        dig = (idx // B**(L - 1 - l)) % B
        K += np.asarray(levels[l].keys)[nodes, dig]
    V = np.asarray(levels[-1].values).reshape(-1, d)
    qk = jnp.asarray(path.sum(1))
    f = jax.jit(lambda q: recall(q, jnp.asarray(K), jnp.asarray(V), beta=8.0))
    t, out = timeit(lambda: f(qk), reps=1)
    res["flat_attention_s"] = t; res["flat_cos"] = acc(out)
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 2**20
res["peak_gib"] = peak
print(json.dumps({k: round(v, 4) for k, v in res.items()}))
"""


def test_nested_read_at_a_million_leaves(benchmark):
    """Issue "nested dictionaries", performance: 4096 path reads over a tree of depth 4 and
    branching 32 (2^20 leaves, fresh Gaussian keys per slot, values at the last level) at d =
    64, beta 8: top-k (k = 4) against soft mode and against one flat attention memory of every
    leaf's composite (summed) key, timed in one process (the issue's "measured in one
    process"); each mode's peak memory (VmHWM) from a process of its own. Targets: top-k at
    least 10x faster than the other two, soft mode within 2x of its products' FLOP floor."""
    def run(which):
        done = subprocess.run([PYTHON, "-c", NESTED_READ, which], capture_output=True, text=True, env=run_env(),
                              cwd=REPO, timeout=1800)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    results = benchmark.pedantic(lambda: {w: run(w) for w in ("all", "topk", "soft", "flat")}, rounds=1,
                                 iterations=1)
    timed = results["all"]
    info = {"topk4_s": timed["topk4_s"], "soft_s": timed["soft_s"], "flat_attention_s": timed["flat_attention_s"],
            "soft_of_flop_floor": timed["soft_of_floor"], "matmul_gflops": timed["matmul_gflops"],
            "peak_gib_topk": results["topk"]["peak_gib"], "peak_gib_soft": results["soft"]["peak_gib"],
            "peak_gib_flat": results["flat"]["peak_gib"], "cos_topk": timed["topk4_cos"],
            "cos_soft": timed["soft_cos"], "cos_flat": timed["flat_cos"],
            # the same modes timed alone, for comparison with the one-process figures
            "alone_topk4_s": results["topk"]["topk4_s"], "alone_soft_s": results["soft"]["soft_s"],
            "alone_soft_of_flop_floor": results["soft"]["soft_of_floor"],
            "alone_flat_attention_s": results["flat"]["flat_attention_s"]}
    benchmark.extra_info.update(info)
    print("\nnested read, 4096 paths, depth 4, branching 32, d = 64:", json.dumps({k: round(v, 3) for k, v in info.items()}))
    assert info["cos_topk"] > 0.99 and info["cos_soft"] > 0.99
    assert info["soft_s"] >= 10 * info["topk4_s"] and info["flat_attention_s"] >= 10 * info["topk4_s"]
    assert info["soft_of_flop_floor"] <= 2.0, "soft mode beyond 2x its FLOP floor on this machine"
