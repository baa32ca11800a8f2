"""The fixed benchmarks of the performance regression gate (bench.regress), each reporting
figures that hold still on a noisy machine: time as a ratio to a matmul timed just before it,
counts of compiled programs, peak memory of a process of its own, accuracies of fixed cells.

    python -m bench.benchmarks --child memory|sweep --rounds N   # (the gate runs these itself)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

# A ratio's tolerance is never below this, whatever the spread measured for the baseline.
MIN_TOLERANCE = 0.25
# A bound's limit: the baseline's largest peak plus this fraction. VmHWM of the same process moves
# by about +-10% run to run and runs higher inside CI's pytest (0.657 and 0.678 GiB against a 0.621 GiB
# maximum of 10 standalone runs); a leak or a buffer that grows with n still doubles it.
BOUND_MARGIN = 0.5
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
REFERENCE_SIZE = 2048


class Measured(NamedTuple):
    """One benchmark's measurement: its figures by name (without the benchmark prefix), and the
    seconds of its timed region per round (for pytest-benchmark's statistics; empty if none)."""

    figures: dict[str, float]
    seconds: list[float]


class Benchmark(NamedTuple):
    name: str
    about: str
    measure: Callable[[int], Measured]  # rounds -> Measured
    # kind and default tolerance of each figure it reports
    figures: dict[str, tuple[str, float]]


# --- the benchmarks --------------------------------------------------------------------------

GRID_D = 256
GRID_N = (4, 64, 1024, 8192)


@lru_cache(maxsize=1)
def jax_configured():
    from bench import environment

    environment.configure_jax()
    import jax

    return jax


@lru_cache(maxsize=1)
def _reference_program():
    jax = jax_configured()
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((REFERENCE_SIZE,) * 2), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    return f, a


def reference_seconds(repeats: int = 3) -> float:
    """Best of ``repeats`` of the reference matmul (2 * 2048^3 FLOPs, float32)."""
    f, a = _reference_program()
    return min(_seconds(lambda: f(a).block_until_ready()) for _ in range(repeats))


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(body: Callable[[], Any], rounds: int, reps: int = 1) -> tuple[float, list[float]]:
    """Median over rounds of (best of ``reps`` runs of body) / (reference matmul timed just
    before), and the body's seconds per round."""
    ratios, seconds = [], []
    for _ in range(rounds):
        ref = reference_seconds()
        t = min(_seconds(body) for _ in range(reps))
        ratios.append(t / ref)
        seconds.append(t)
    return statistics.median(ratios), seconds


class _CompileCounter:
    """Counts XLA backend compilations while active (jax.monitoring has no unregister for a
    single listener, so one listener is installed once and switched on and off)."""

    count = 0
    active = False
    installed = False

    def __enter__(self):
        if not _CompileCounter.installed:
            jax_configured().monitoring.register_event_duration_secs_listener(_CompileCounter._listen)
            _CompileCounter.installed = True
        _CompileCounter.count, _CompileCounter.active = 0, True
        return self

    def __exit__(self, *exc):
        _CompileCounter.active = False

    @staticmethod
    def _listen(event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT and _CompileCounter.active:
            _CompileCounter.count += 1


@lru_cache(maxsize=1)
def _grid_family():
    from bench import sweep
    from bench.spec import Cell

    jax_configured()
    return sweep.family_of(Cell("pinv", GRID_D, GRID_N[0], GRID_D, 0.0, "gaussian", "float32"))


def _compile_grid_family():
    import jax.numpy as jnp

    import kernels
    from kernels import streams

    jax, family = jax_configured(), _grid_family()
    seeds = jnp.arange(1, dtype=jnp.int32)
    return jax.jit(kernels.matrix_cell_program(family), donate_argnums=1).lower(
        seeds, streams.new_cache(family, 1), *kernels.matrix_args(family, GRID_N[0], 0.0)).compile()


def grid_compile(rounds: int) -> Measured:
    """Compile the classic grid's pinv family at d = 256 (trace, lower, XLA compile), afresh each round."""
    ratio, seconds = interleaved(_compile_grid_family, rounds)
    return Measured({"time_ratio": ratio}, seconds)


def grid_run(rounds: int) -> Measured:
    """The cells n = 4, 64, 1024, 8192 of that family with its one compiled program."""
    import jax.numpy as jnp

    import kernels
    from kernels import streams

    jax, family = jax_configured(), _grid_family()
    compiled = _compile_grid_family()
    seeds = jnp.arange(1, dtype=jnp.int32)
    state = {"cache": jax.device_put(streams.new_cache(family, 1)), "out": {}}
    args = {n: kernels.matrix_args(family, n, 0.0) for n in GRID_N}

    def cells():
        for n in GRID_N:
            out, state["cache"] = compiled(seeds, state["cache"], *args[n])
            state["out"][n] = jax.block_until_ready(out)

    cells()  # warm-up: first-call allocations
    with _CompileCounter() as counter:
        ratio, seconds = interleaved(cells, rounds)
    figures = {"time_ratio": ratio, "compiles": float(counter.count)}
    for n, out in state["out"].items():
        figures[f"cos_n{n}"] = float(out.cos_mean[0])
        figures[f"acc_n{n}"] = float(out.acc[0])
    return Measured(figures, seconds)


ATTENTION_Q, ATTENTION_D = 4096, 128


def attention_recall(rounds: int) -> Measured:
    """Blockwise softmax attention (kernels.recall, scaled dot), q = n = 4096, d = 128; its
    largest error against a float64 NumPy reference."""
    import jax.numpy as jnp
    import numpy as np

    from kernels import attention

    jax = jax_configured()
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((ATTENTION_Q, ATTENTION_D)).astype(np.float32) for _ in range(3))
    program = jax.jit(lambda Q, K, V: attention.recall(Q, K, V, similarity="scaled_dot"))
    inputs = tuple(jnp.asarray(x) for x in (Q, K, V))
    out = program(*inputs).block_until_ready()
    ratio, seconds = interleaved(lambda: program(*inputs).block_until_ready(), rounds, reps=3)
    s = (Q.astype(np.float64) @ K.T.astype(np.float64)) / math.sqrt(ATTENTION_D)
    w = np.exp(s - s.max(axis=1, keepdims=True))
    reference = (w / w.sum(axis=1, keepdims=True)) @ V.astype(np.float64)
    return Measured({"time_ratio": ratio, "max_error": float(np.max(np.abs(np.asarray(out, np.float64) - reference)))},
                    seconds)


FUZZY_QUERIES = 1000


def fuzzy_batch(rounds: int) -> Measured:
    """The fuzzy store's batch: 1000 GloVe words queried against the demo records, top 5 over
    the 400k-word vocabulary."""
    import numpy as np

    from fuzzy_kv import DEMO_RECORDS, Database, Embeddings

    jax_configured()
    emb = Embeddings.glove()
    db = Database(DEMO_RECORDS, embeddings=emb)
    words = [emb.words[i] for i in np.random.default_rng(0).integers(0, 100_000, FUZZY_QUERIES)]
    answers = db.answers(words, 5)  # compile for this batch shape
    ratio, seconds = interleaved(lambda: db.answers(words, 5), rounds)
    return Measured({"time_ratio": ratio, "top1_score": float(np.mean([a[0].score for a in answers])),
                     "top5_score": float(np.mean([a[-1].score for a in answers]))}, seconds)


NESTED_DEPTH, NESTED_B, NESTED_D, NESTED_Q = 3, 32, 64, 1024


def full_tree(depth: int, branching: int, d: int, queries: int, seed: int = 0):
    """A full tree as kernels.nested levels (fresh Gaussian keys per slot, values at the last
    level, a one-parent gather table) and exact query paths to random leaves: (levels, paths
    (Q, depth, d), lengths (Q,), the leaves' values (Q, d) as NumPy). Built from arrays, not a
    Python dict: the million-leaf perf test uses it too."""
    import jax.numpy as jnp
    import numpy as np

    from kernels import nested as kn

    jax_configured()
    rng = np.random.default_rng(seed)
    L, B = depth, branching
    levels = []
    for l in range(L):
        n = B**l
        keys = (rng.standard_normal((n, B, d)) / np.sqrt(d)).astype(np.float32)
        child = (np.arange(n * B).reshape(n, B) if l + 1 < L else -np.ones((n, B))).astype(np.int32)
        values = ((rng.standard_normal((n, B, d)) / np.sqrt(d)) if l + 1 == L else np.zeros((n, B, d))).astype(np.float32)
        levels.append(kn.Level(jnp.asarray(keys), jnp.ones((n, B), bool), jnp.asarray(child), jnp.asarray(values),
                               None if l == 0 else jnp.arange(n, dtype=jnp.int32)[:, None]))
    leaves = rng.integers(0, B**L, queries)
    node = np.zeros(queries, np.int64)
    paths = np.zeros((queries, L, d), np.float32)
    for l in range(L):
        digit = (leaves // B ** (L - 1 - l)) % B
        paths[:, l] = np.asarray(levels[l].keys)[node, digit]
        node = node * B + digit
    target = np.asarray(levels[-1].values).reshape(-1, d)[leaves]
    return tuple(levels), jnp.asarray(paths), jnp.full((queries,), L, jnp.int32), target


@lru_cache(maxsize=1)
def _nested_tree():
    return full_tree(NESTED_DEPTH, NESTED_B, NESTED_D, NESTED_Q)


def nested_read(rounds: int) -> Measured:
    """1024 exact path reads over a full tree of depth 3, branching 32 (32k leaves), d = 64,
    beta 8: soft mode (tiled over nodes) and a top-4 beam; the mean cosine of each read."""
    import numpy as np

    from kernels import nested as kn

    jax = jax_configured()
    levels, paths, lengths, target = _nested_tree()
    figures, seconds = {}, []
    for name, mode, k in (("soft", "soft", 1), ("topk", "topk", 4)):
        read = lambda: jax.block_until_ready(kn.read(levels, paths, lengths, mode=mode, beta=8.0, k=k))  # noqa: E731
        out = np.asarray(read().values, np.float64)
        ratio, took = interleaved(read, rounds, reps=3)
        cos = np.sum(out * target, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(target, axis=1))
        figures[f"{name}_time_ratio"], figures[f"{name}_cos"] = ratio, float(cos.mean())
        seconds += took
    return Measured(figures, seconds)


MEMORY_D, MEMORY_N = 256, 2**17


def memory_bound(rounds: int) -> Measured:
    """The d = 1024, n = 2^20 memory bound scaled down (d = 256, n = 2^17, pairs streamed as
    the sweep streams that cell: drawn again on each pass, none kept): peak memory of a process that runs only that cell, its time
    ratio (interleaved in that process) and its cosine against theory."""
    return Measured(*_child("memory", rounds))


def sweep_programs(rounds: int) -> Measured:
    """A tiny sweep (pinv and softmax attention, d = 32, 64, n = 4..256, 2 seeds) in a fresh
    process: every XLA compilation it makes, and the families it compiled."""
    return Measured(*_child("sweep", rounds))


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("grid_compile", grid_compile.__doc__, grid_compile, {"time_ratio": ("ratio", MIN_TOLERANCE)}),
    Benchmark("grid_run", grid_run.__doc__, grid_run, {
        "time_ratio": ("ratio", MIN_TOLERANCE), "compiles": ("count", 0.0),
        **{f"{m}_n{n}": ("accuracy", 1e-4) for n in GRID_N for m in ("cos", "acc")}}),
    Benchmark("attention_recall", attention_recall.__doc__, attention_recall,
              {"time_ratio": ("ratio", MIN_TOLERANCE), "max_error": ("accuracy", 1e-5)}),
    Benchmark("fuzzy_batch", fuzzy_batch.__doc__, fuzzy_batch,
              {"time_ratio": ("ratio", MIN_TOLERANCE), "top1_score": ("accuracy", 1e-4),
               "top5_score": ("accuracy", 1e-4)}),
    Benchmark("memory_bound", memory_bound.__doc__, memory_bound,
              {"peak_gib": ("bound", BOUND_MARGIN), "time_ratio": ("ratio", MIN_TOLERANCE),
               "cos_mean": ("accuracy", 1e-4)}),
    Benchmark("sweep_programs", sweep_programs.__doc__, sweep_programs,
              {"backend_compiles": ("count", 0.0), "families": ("count", 0.0), "rows": ("count", 0.0)}),
    Benchmark("nested_read", nested_read.__doc__, nested_read,
              {"soft_time_ratio": ("ratio", MIN_TOLERANCE), "topk_time_ratio": ("ratio", MIN_TOLERANCE),
               "soft_cos": ("accuracy", 1e-4), "topk_cos": ("accuracy", 1e-4)}),
)}


# --- benchmarks that need a process of their own ---------------------------------------------

def _child(which: str, rounds: int) -> tuple[dict[str, float], list[float]]:
    done = subprocess.run([sys.executable, "-m", "bench.benchmarks", "--child", which, "--rounds", str(rounds)],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"the {which} benchmark's process failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["figures"], result["seconds"]


def _peak_gib() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would carry the parent's)."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20


def _child_memory(rounds: int) -> tuple[dict[str, float], list[float]]:
    import jax.numpy as jnp

    import kernels
    from kernels import streams
    from bench import sweep
    from bench.spec import Cell

    jax = jax_configured()
    cell = Cell("pinv", MEMORY_D, MEMORY_N, MEMORY_D, 0.0, "gaussian", "float32")
    family = sweep.family_of(cell, keep=0)
    seeds = jnp.arange(1, dtype=jnp.int32)
    compiled = jax.jit(kernels.matrix_cell_program(family), donate_argnums=1).lower(
        seeds, streams.new_cache(family, 1), *kernels.matrix_args(family, 4, 0.0)).compile()
    args = kernels.matrix_args(family, MEMORY_N, 0.0)
    out = {}

    def cell_run():
        out["m"], _ = compiled(seeds, streams.new_cache(family, 1), *args)
        jax.block_until_ready(out["m"])

    ratio, seconds = interleaved(cell_run, max(1, rounds // 2))
    return {"peak_gib": _peak_gib(), "time_ratio": ratio, "cos_mean": float(out["m"].cos_mean[0])}, seconds


def _child_sweep(rounds: int) -> tuple[dict[str, float], list[float]]:
    from bench import pipeline
    from bench.spec import SweepSpec

    spec = SweepSpec(kernels=("pinv", "attention"), d=(32, 64), n=(4, 16, 64, 256), seeds=2,
                     similarity=("scaled_dot",), separation=("softmax",))
    jax_configured()
    with tempfile.TemporaryDirectory() as out, _CompileCounter() as counter:
        start = time.perf_counter()
        run = pipeline.start(spec, Path(out), ["bench.regress"], compile_cache=None)
        manifest = pipeline.execute(run, report=False, progress=False)
        from bench import store

        rows = len(store.load_results(run.run_dir))
        seconds = time.perf_counter() - start
    return {"backend_compiles": float(counter.count), "families": float(manifest["compiled_programs"]),
            "rows": float(rows)}, [seconds]



def measure(names: list[str], rounds: int, progress: Callable[[str], None] = lambda s: None) -> dict[str, Measured]:
    """Run the named benchmarks (keys of BENCHMARKS), in order."""
    results = {}
    for name in names:
        progress(name)
        results[name] = BENCHMARKS[name].measure(rounds)
    return results


def flat(results: dict[str, Measured]) -> dict[str, float]:
    """Every figure, named ``<benchmark>.<figure>``."""
    return {f"{name}.{fig}": value for name, m in results.items() for fig, value in m.figures.items()}


def kind_of(figure: str) -> tuple[str, float]:
    """(kind, default tolerance) of a figure name ``benchmark.figure``."""
    bench, _, fig = figure.partition(".")
    return BENCHMARKS[bench].figures[fig]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=("memory", "sweep"), required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    figures, seconds = {"memory": _child_memory, "sweep": _child_sweep}[args.child](args.rounds)
    print(json.dumps({"figures": figures, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
