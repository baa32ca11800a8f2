"""The sweep driver: compile each family of cells once, run every cell with its seeds batched
by vmap and sharded over all devices, and store one parquet part per finished cell.

A failing cell is recorded (status "error") and the sweep goes on; a cell that would not fit
in device memory is recorded as "skipped" with what it needed; a cell whose metrics are not
finite is "nan". Timings: compile_s and run_s are each row's share (the cell's time divided
by its seeds), so they add up over rows; flops are analytic, per row.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

import kernels
from bench import capacity, environment, store, theory
from kernels import names, streams
from bench.spec import GLOVE_WORDS, Cell, SpecError, SweepSpec

# A run's working set is estimated from the arrays it holds; XLA temporaries add to that.
_MEMORY_HEADROOM = 2.0
# Bytes per device a family's cache of drawn pairs may take (less where the device has less).
KEEP_BYTES = 2**30  # 1 GiB: the default run's d = 1024 families (3 seeds, n <= 2^15: 805 MB) keep theirs
# XLA:CPU's loop-fusion emitters compile a cell program about 2x slower than its older ones
# (1.27 s against 0.73 s for a d = 1024 pinv family on a 2-core EPYC) and run its cells about
# 13% faster (3.21 s against 3.67 s for n = 4..2^15): the quick way pays where a family's
# cells together run less than about 4 s, i.e. need less than this many FLOPs per device in
# all (see compiler_options). Counted over the family's cells, not its largest one: the
# slower loops cost time in every cell.
FAST_COMPILE_FLOPS = 1e12
# Programs compiled side by side in the background. Two: while the first cell waits for its
# family and its pair stream's baseline program, both compile at once instead of one after
# the other on a core of two (the classic grid, cold cache, seven interleaved rounds: 12.5-14.0 s
# against 12.8-15.4 s; its wait for programs, in the five rounds that recorded it, 0.5-1.8 s
# against 2.3-3.3 s).
COMPILE_THREADS = 2
Family = kernels.MatrixFamily | kernels.AttentionFamily


class _Programs:
    """Compiled programs, one per family, compiled ahead of time, and the cache buffer of the
    cells running now (donated to each call and handed back, so it is allocated once per
    buffer shape: families of one d, dv, chunk and keep share it, see running_order).
    ``prefetch`` compiles a family in the background (COMPILE_THREADS) while another one runs;
    a family's compile time (measured in that thread) is charged to its first cell, and the
    time cells actually waited is summed in ``compile_wait_s``."""

    def __init__(self, mesh: Mesh, seeds: int, options: Callable[[Family], dict] = lambda family: {}):
        self.mesh = mesh
        self.seeds = seeds
        self.options = options  # XLA compiler options of a family (compiler_options)
        self.compiled: dict[tuple[str, Family], Future] = {}
        self.compile_count = 0
        self.compile_wait_s = 0.0  # time cells waited for a program (less than compiling, when prefetched)
        self.fast_compile_count = 0  # programs compiled with compiler options (compiler_options)
        self._count_lock = threading.Lock()  # compiles finish on several threads
        self._pool = ThreadPoolExecutor(max_workers=COMPILE_THREADS, thread_name_prefix="compile")
        self._cache: tuple[tuple, Any] | None = None  # (buffer_of its families, buffer)
        self._charged: set = set()
        # The random baselines of each pair stream (see baselines): compiled programs, and
        # their values per seed once computed.
        self.baseline_count = 0
        self._baseline_programs: dict[tuple, Future] = {}
        self._baseline_values: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _key(self, family: Family):
        return type(family).__name__, family  # NamedTuples of equal fields compare equal

    def _compile(self, family: Family, args) -> tuple[Any, float]:
        start = time.perf_counter()
        batch = NamedSharding(self.mesh, PartitionSpec("seeds"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        if isinstance(family, kernels.AttentionFamily):
            program = kernels.attention_cell_program(family)
        else:
            program = kernels.matrix_cell_program(family)
        fn = jax.jit(program, in_shardings=(batch, batch) + (replicated,) * len(args), out_shardings=(batch, batch),
                     donate_argnums=1)
        cache = jax.ShapeDtypeStruct(streams.cache_shape(family, self.seeds), np.dtype(family.dtype), sharding=batch)
        seeds = jax.ShapeDtypeStruct((self.seeds,), np.int32, sharding=batch)
        options = self.options(family)
        compiled, quick = _compile_lowered(fn.lower(seeds, cache, *args), options)
        with self._count_lock:
            self.fast_compile_count += quick
        return compiled, time.perf_counter() - start

    def prefetch(self, family: Family, args) -> None:
        """Start compiling ``family`` in the background (args: its dynamic arguments)."""
        key = self._key(family)
        if key not in self.compiled:
            self.compiled[key] = self._pool.submit(self._compile, family, args)
            self.compile_count += 1

    def get(self, family: Family, args) -> tuple[Any, float]:
        """The compiled program, and its compile time the first time it is asked for (0 after)."""
        start = time.perf_counter()
        key = self._key(family)
        self.prefetch(family, args)
        compiled, compile_s = self.compiled[key].result()
        if key in self._charged:
            return compiled, 0.0
        self._charged.add(key)
        self.compile_wait_s += time.perf_counter() - start
        return compiled, compile_s

    def run(self, family: Family, compiled, seed_array, args):
        """Run one cell with a cache buffer of the family's shape, allocated only when the shape
        changes: families of the same d, dv, chunk and keep share one (each cell writes the
        chunks it reads before reading them; stale rows beyond n are masked)."""
        shape = buffer_of(family)
        if self._cache is None or self._cache[0] != shape:
            self._cache = None  # free the previous buffer first
            batch = NamedSharding(self.mesh, PartitionSpec("seeds"))
            self._cache = (shape, jax.device_put(streams.new_cache(family, self.seeds), batch))
        metrics, buffer = compiled(seed_array, self._cache[1], *args)
        self._cache = (shape, buffer)
        return jax.block_until_ready(metrics)

    def _compile_baseline(self, stream: tuple, tables: tuple) -> tuple[Any, float]:
        start = time.perf_counter()
        d, dv, patterns, dtype, chunk = stream
        batch = NamedSharding(self.mesh, PartitionSpec("seeds"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        program = kernels.baseline_program(d=d, dv=dv, patterns=patterns, chunk=chunk, dtype=dtype)
        fn = jax.jit(program, in_shardings=(batch,) + (replicated,) * len(tables), out_shardings=(batch, batch))
        seeds = jax.ShapeDtypeStruct((self.seeds,), np.int32, sharding=batch)
        compiled, _ = _compile_lowered(fn.lower(seeds, *tables), compiler_options(0.0))  # small: the quick way
        return compiled, time.perf_counter() - start

    def prefetch_baseline(self, family: Family, args) -> None:
        """Start compiling the baseline program of ``family``'s pair stream in the background."""
        stream = _stream_of(family)
        if stream not in self._baseline_programs:
            self._baseline_programs[stream] = self._pool.submit(self._compile_baseline, stream, _tables(family, args))
            self.baseline_count += 1

    def baselines(self, family: Family, seed_array, args) -> tuple[np.ndarray, np.ndarray, float, float]:
        """The random baselines (cos, dist per seed) of ``family``'s pair stream, computed
        once per stream by their own program (family.baseline is False: the cell programs
        leave them NaN); with the compile and run seconds that took, charged to the first cell
        that asks (0 after)."""
        stream = _stream_of(family)
        if stream in self._baseline_values:
            return (*self._baseline_values[stream], 0.0, 0.0)
        waited = time.perf_counter()
        self.prefetch_baseline(family, args)
        compiled, compile_s = self._baseline_programs[stream].result()
        self.compile_wait_s += time.perf_counter() - waited
        start = time.perf_counter()
        cos, dist = jax.block_until_ready(compiled(seed_array, *_tables(family, args)))
        run_s = time.perf_counter() - start
        self._baseline_values[stream] = (np.asarray(cos), np.asarray(dist))
        return (*self._baseline_values[stream], compile_s, run_s)

    def close(self) -> None:
        self._cache = None
        self._pool.shutdown(wait=True, cancel_futures=True)


def _compile_lowered(lowered, options: dict[str, Any]) -> tuple[Any, bool]:
    """Compile with XLA ``options`` (compiler_options), or as it comes on an XLA that lacks
    them; and whether the options were used."""
    try:
        return lowered.compile(options or None), bool(options)
    except jax.errors.JaxRuntimeError:
        if not options:
            raise
        return lowered.compile(), False


def _tables(family: Family, args) -> tuple:
    """The table a family's stream reads (the last of its cell arguments, cell_args), or nothing."""
    return (args[-1],) if family.patterns == kernels.TABLE else ()


def _stream_of(family: Family) -> tuple:
    """What a family's random baselines depend on: its pair stream (d, dv, patterns, dtype)
    and chunk (baseline pairs are rows of chunks, see kernels.metrics.baseline)."""
    return family.d, family.dv, family.patterns, family.dtype, family.chunk


def compiler_options(family_flops: float) -> dict[str, Any]:
    """XLA options of a family whose cells need ``family_flops`` per device in all (the cells
    a run will run): on CPU, the quicker-compiling fusion emitters where compiling dominates
    (FAST_COMPILE_FLOPS)."""
    if jax.default_backend() != "cpu" or family_flops >= FAST_COMPILE_FLOPS:
        return {}
    return {"xla_cpu_use_fusion_emitters": False}


# scaled_dot scores are dot scores / sqrt(head dim): under these separations a scaled_dot cell
# is the dot cell at beta / sqrt(head dim) (softmax, top-k) or at any beta (scale-free
# weights), so it runs in the dot family and the two similarities share one program.
_BETA_SCALED, _SCALE_FREE = ("softmax", "topk"), ("max", "polynomial")


def _as_dot(cell: Cell) -> bool:
    return (cell.kernel == "attention" and cell.similarity == "scaled_dot"
            and cell.separation in _BETA_SCALED + _SCALE_FREE)


def family_of(cell: Cell, keep: int = 0) -> Family:
    """The compiled family a cell runs in: everything static about it (a Cell carries all of
    it). keep: pairs the family's cache holds (see keep_pairs); it changes no number. Its
    program leaves the random baselines to a program of their own, run once per pair stream
    (_Programs.baselines): they depend on the stream only, and in every family they cost
    compile time (0.35-0.45 s for a pinv family with the default emitters: bench.profile_cell
    --with-baselines; docs/performance-log.md) and a loop per cell."""
    patterns = kernels.TABLE if cell.patterns == "glove" else cell.patterns
    # Matrix and attention memories of the same d and dv use the same chunk: they see the same pairs.
    chunk = kernels.default_chunk(cell.d, cell.dv)
    if cell.kernel == "attention":
        return kernels.AttentionFamily(
            similarity="dot" if _as_dot(cell) else cell.similarity, separation=cell.separation, d=cell.d,
            dv=cell.dv, patterns=patterns, dtype=cell.dtype, chunk=chunk, queries=cell.queries, k=cell.topk or 1, heads=cell.heads,
            steps=cell.steps, noisy=cell.noise > 0, masked=bool(cell.mask), keep=keep, baseline=False)
    method = kernels.default_method() if cell.method in (None, "auto") else cell.method
    # A ridge cell runs in the pinv family (pinv with lam and min_norm False is ridge): one
    # program for both.
    rule = "pinv" if cell.kernel == "ridge" else cell.kernel
    return kernels.MatrixFamily(rule=rule, d=cell.d, dv=cell.dv, patterns=patterns, dtype=cell.dtype,
                                chunk=chunk, queries=cell.queries, method=method, noisy=cell.noise > 0,
                                masked=bool(cell.mask), keep=keep, baseline=False)


def keep_pairs(cell: Cell, largest_n: int, seeds_per_device: int, budget: int) -> int:
    """The ``keep`` of a family: every pair its cells store (largest_n) when they fit in
    ``budget`` bytes per device, shared by its seeds, so each pair is drawn once, not once per
    pass over the memory; else 0 (pairs drawn again on each pass, memory independent of n)."""
    per_pair = (cell.d + cell.dv) * np.dtype(cell.dtype).itemsize * seeds_per_device
    return largest_n if largest_n * per_pair <= budget else 0


def cell_args(cell: Cell, family: Family, mesh: Mesh) -> tuple:
    """The dynamic arguments of a cell's program, with the dtypes the program expects."""
    if isinstance(family, kernels.AttentionFamily):
        beta = _knob(cell, "beta")
        if _as_dot(cell) and cell.separation in _BETA_SCALED:
            beta = beta / math.sqrt(cell.d // (cell.heads or 1))
        args = kernels.attention_args(family, cell.n, cell.noise, beta, _knob(cell, "degree"), cell.mask or 0.0)
    else:  # pinv is ridge at lambda = 0
        args = kernels.matrix_args(family, cell.n, cell.noise, cell.lam or 0.0, _knob(cell, "eta"),
                                   _knob(cell, "passes"), cell.mask or 0.0, min_norm=cell.kernel != "ridge")
    if family.patterns == kernels.TABLE:
        args = (*args, glove_table(mesh))
    return args


def _knob(cell: Cell, name: str):
    """The cell's value of a knob, or its default where the cell's memory does not read it."""
    value = getattr(cell, name)
    return names.default(name) if value is None else value


@lru_cache(maxsize=1)
def glove_table(mesh: Mesh) -> jax.Array:
    """The GLOVE_WORDS most frequent GloVe 6B 50-d vectors, replicated on every device."""
    from fuzzy_kv.embeddings import Embeddings

    vectors = np.asarray(Embeddings.glove().vectors[:GLOVE_WORDS], np.float32)
    return jax.device_put(vectors, NamedSharding(mesh, PartitionSpec()))


def estimate_bytes(family: Family, seeds_per_device: int) -> int:
    """Peak bytes of one cell on one device: independent of n by construction."""
    item = np.dtype(family.dtype).itemsize
    if isinstance(family, kernels.AttentionFamily):
        d, dv, c, q = family.d, family.dv, family.chunk, family.queries
        width = family.k + c if family.separation in ("topk", "max") else c
        per_seed = item * (
            q * (3 * d + 4 * dv)                        # queries, true values, recalls, running state
            + q * family.k * dv * 2                     # running top-k values (topk)
            + q * width * 3                             # a block of scores and weights
            + c * (3 * d + 2 * dv) * 2)                 # one chunk of keys, values, noise, masks
        cache = item * math.prod(streams.cache_shape(family, 1))  # kept pairs (allocated once, not doubled)
        return int((per_seed * _MEMORY_HEADROOM + cache) * seeds_per_device)
    d, dv, c, m = family.d, family.dv, family.chunk, family.queries
    per_seed = (
        8 * (d * d + 2 * d * dv)                       # Gram, cross term, W (float64 solves)
        + 8 * d * d                                    # dual Gram
        + item * c * (3 * d + 3 * dv) * 2              # one chunk of keys, values, noise, recalls
        + item * m * (c * 2 + dv * 2)                  # accuracy sample and its scores
    )
    cache = item * math.prod(streams.cache_shape(family, 1))  # kept pairs, incl. the first d (dual solve)
    return int((per_seed * _MEMORY_HEADROOM + cache) * seeds_per_device)


def auto_method(manifest: dict[str, Any]) -> str:
    """What ``--method auto`` means in this run: the manifest's choice (bench.environment.
    auto_method, made when the run started), or kernels.default_method() for a run that
    started before the choice was recorded."""
    method = manifest.get("auto_method") or kernels.default_method()
    if method not in names.METHODS:
        raise store.StoreError(f"the manifest's auto_method is {method!r}, not one of {', '.join(names.METHODS)}; "
                               "repair the field (or remove it) and resume again")
    return method


def check_fits(spec: SweepSpec) -> None:
    """Refuse, before anything is written, a spec of which no cell fits in device memory (it
    could only record skipped rows): SpecError names the smallest need and the fix."""
    available = environment.device_memory_bytes()
    if available is None:
        return
    per_device = -(-spec.seeds // jax.local_device_count())
    settings = spec.settings(auto_method=kernels.default_method())  # a memory estimate: either method will do
    need, i = min((estimate_bytes(family_of(s), per_device), i) for i, s in enumerate(settings))
    smallest = settings[i]
    if need > available:
        raise SpecError(f"no cell fits in memory: the smallest ({smallest.setting_label()}, {spec.seeds} seeds) needs "
                        f"about {need / 2**30:.1f} GiB per device, {available / 2**30:.1f} GiB are free; use fewer "
                        "--seeds, a smaller --d/--dv or fewer --queries")


def run_sweep(spec: SweepSpec, run_dir: Path, manifest: dict[str, Any], *, save: Callable[[], None],
              progress: bool | None = None,
              mine: Callable[[Cell], bool] | None = None, finished: set[str] | None = None) -> dict[str, Any]:
    """Run every cell of ``spec`` not yet finished in ``run_dir`` (or, for a capacity spec,
    every search, reusing finished probes). ``manifest`` is the run's, held by bench.pipeline:
    the sweep adds to it (``cell_ids`` before the first part, then ``compiled_programs``,
    ``fast_compile_programs`` (those compiled with compiler_options), ``compile_wait_s`` and
    ``cell_order``, the parts that make up the run, in order) and calls
    ``save`` where the addition must reach the disk before anything else does. Returns it.
    A multi-process run (bench.cluster) passes ``mine`` (the cells this process runs; a grid
    only) and ``finished`` (the part ids finished before it started, as process 0 saw them)."""
    devices = jax.local_devices()  # in a multi-process run, this process's own (bench.cluster)
    mesh = Mesh(np.array(devices), ("seeds",))
    seeds = list(range(spec.seeds))
    padded = seeds + [seeds[-1]] * (-len(seeds) % len(devices))  # pad to a multiple of devices
    per_device = len(padded) // len(devices)
    family_flops: dict[Family, float] = {}  # per device, summed over the family's cells (compiler_options)
    programs = _Programs(mesh, len(padded), lambda f: compiler_options(family_flops.get(f, math.inf)))
    seed_array = jax.device_put(np.array(padded, np.int32), NamedSharding(mesh, PartitionSpec("seeds")))
    available = environment.device_memory_bytes()
    budget = min(KEEP_BYTES, available // 8) if available else KEEP_BYTES
    largest_n = spec.max_n if spec.capacity else max(spec.n)
    method = auto_method(manifest)
    families: dict[Cell, Family] = {}

    def family(cell: Cell) -> Family:
        setting = dataclasses.replace(cell, n=0)
        if setting not in families:
            families[setting] = family_of(cell, keep_pairs(cell, largest_n, per_device, budget))
        return families[setting]

    def prefetch(cells: list[Cell]) -> None:
        """Compile every family the run will need, in order, in the background."""
        seen: set = set()
        runnable = [c for c in cells if not (c.separation == "topk" and c.topk > c.n)]  # the rest are skipped
        for cell in runnable:
            f = family(cell)
            family_flops[f] = family_flops.get(f, 0.0) + cell_flops(cell) * per_device
        for cell in runnable:
            f = family(cell)
            if f in seen:
                continue
            seen.add(f)
            probe = dataclasses.replace(cell, n=max(cell.n, 1))
            if estimate_bytes(f, per_device) <= (available or math.inf):
                try:
                    args = cell_args(probe, f, mesh)
                    programs.prefetch(f, args)
                    programs.prefetch_baseline(f, args)
                except Exception:  # noqa: BLE001 - the cell itself will record what went wrong
                    continue
    done = store.finished_cells(run_dir) if finished is None else set(finished)
    show = sys.stderr.isatty() if progress is None else progress
    # Runs written before cell ids hashed every setting name their parts by Cell.legacy_id.
    if "cell_ids" not in manifest:  # fixed before the first part is written
        manifest["cell_ids"] = store.CELL_IDS if not done else 1
        save()
    part_id = (lambda c: c.id) if manifest["cell_ids"] == store.CELL_IDS else (lambda c: c.legacy_id)

    def run_cell(cell: Cell) -> list[dict[str, Any]]:
        cid = part_id(cell)
        if cid in done:
            rows = writer.rows(cid)
            return store.read_part(run_dir, cid) if rows is None else rows
        rows = _run_one(cell, family(cell), programs, seed_array, len(seeds), per_device, available,
                        run_id=run_dir.name, cell_id=cid)
        writer.submit(cid, rows)
        done.add(cid)
        return rows

    try:
        with store.PartWriter(run_dir) as writer:
            if spec.capacity:  # which probes a search needs is known only as it goes: compiled on demand
                order = _capacity_searches(spec, run_dir, run_cell, part_id, show, method)
            else:
                order = _grid(spec, run_cell, part_id, done, prefetch, show, method, mine,
                          reorder=lambda cells: running_order(cells, family))
    finally:
        programs.close()
    manifest["compiled_programs"] = manifest.get("compiled_programs", 0) + programs.compile_count
    manifest["baseline_programs"] = manifest.get("baseline_programs", 0) + programs.baseline_count
    manifest["compile_wait_s"] = manifest.get("compile_wait_s", 0.0) + programs.compile_wait_s
    manifest["fast_compile_programs"] = manifest.get("fast_compile_programs", 0) + programs.fast_compile_count
    manifest["cell_order"] = order
    return manifest


def running_order(cells: list[Cell], family: Callable[[Cell], Family]) -> list[Cell]:
    """The order cells run in: families whose cache buffers have one shape one after another,
    each family's cells together, each in the order it first appears (so each family's cells in
    the spec's order). The spec interleaves families (pinv, then hebbian, then ridge, which runs
    in pinv's program; dot and scaled_dot attention by n); run in its order, a buffer was
    allocated and filled again at every change (805 MB for d = 1024 and 3 seeds, about 0.25 s
    each). Results are stored in the spec's order whatever this order is."""
    first_buffer: dict[tuple, int] = {}
    first_family: dict[Family, int] = {}
    for i, cell in enumerate(cells):
        f = family(cell)
        first_buffer.setdefault(buffer_of(f), i)
        first_family.setdefault(f, i)
    return sorted(cells, key=lambda c: (first_buffer[buffer_of(family(c))], first_family[family(c)]))


def buffer_of(family: Family) -> tuple:
    """What a family's cache buffer is: its shape per seed and dtype. Families with the same
    one share a buffer (_Programs.run) and run one after another (running_order)."""
    return streams.cache_shape(family, 1), family.dtype


def _grid(spec: SweepSpec, run_cell, part_id, done, prefetch, show: bool, method: str, mine=None,
          reorder: Callable[[list[Cell]], list[Cell]] = lambda cells: cells) -> list[str]:
    """Every cell of the grid not yet done (and this process's, see run_sweep), in the order
    ``reorder`` gives (running_order); returns the part ids of all of them, in the spec's
    order. method: what --method auto means (auto_method)."""
    cells = spec.cells(auto_method=method)
    todo = reorder([c for c in cells if part_id(c) not in done and (mine is None or mine(c))])
    prefetch(todo)
    total = len(cells) if mine is None else len(todo)
    with tqdm(total=total, initial=total - len(todo), desc="cells", unit="cell", disable=not show,
              file=sys.stderr) as bar:
        for cell in todo:
            bar.set_postfix_str(cell.label(), refresh=False)
            run_cell(cell)
            bar.update()
    return [part_id(c) for c in cells]


def _capacity_searches(spec: SweepSpec, run_dir: Path, run_cell: Callable[[Cell], list[dict[str, Any]]],
                       part_id: Callable[[Cell], str], show: bool, method: str) -> list[str]:
    """One capacity search per setting of ``spec``; writes capacity.parquet and returns the
    probe cells in the order run."""
    order: list[str] = []
    rows = []
    settings = spec.settings(auto_method=method)
    with tqdm(total=len(settings), desc="capacity searches", unit="search", disable=not show,
              file=sys.stderr) as bar:
        for setting in settings:
            bar.set_postfix_str(setting.setting_label(), refresh=False)

            def probe(n: int, setting=setting) -> capacity.Probe:
                cell = dataclasses.replace(setting, n=n)
                cell_rows = run_cell(cell)
                if part_id(cell) not in order:
                    order.append(part_id(cell))
                bad = [r["status"] for r in cell_rows if r["status"] != "ok"]
                accs = [r["acc"] for r in cell_rows if r["status"] == "ok"]
                return capacity.Probe(n, float(np.mean(accs)) if accs else math.nan, bad[0] if bad else "ok")

            start = capacity.start_n(setting)
            found = capacity.search(probe, spec.threshold, spec.max_n, start)
            rows.append(dict(
                {k: getattr(setting, k) for k in store.SETTING_FIELDS}, run_id=run_dir.name, d=setting.d,
                dv=setting.dv, threshold=spec.threshold, max_n=spec.max_n, start_n=start,
                capacity=found.capacity, capped=found.capped, capacity_text=found.text(start, spec.max_n),
                acc_at_capacity=None if math.isnan(found.acc) else found.acc,
                theory_scale=_nan_to_none(theory.capacity_scale(setting)),
                probes_n=[p.n for p in found.probes], probes_acc=[p.acc for p in found.probes],
                probes_status=[p.status for p in found.probes]))
            bar.update()
    store.write_capacity(run_dir, rows)
    return order


def _run_one(cell: Cell, family: Family, programs: _Programs, seed_array, n_seeds: int, per_device: int,
             available: int | None, *, run_id: str, cell_id: str) -> list[dict[str, Any]]:
    """The rows of one cell. Whatever goes wrong inside (theory, baselines, the kernel, row
    building) is recorded in its rows and the sweep goes on: a resume never meets it again."""
    try:
        return _measure(cell, family, programs, seed_array, n_seeds, per_device, available, run_id=run_id,
                        cell_id=cell_id)
    except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
        base = _identity_row(cell, run_id, cell_id)
        return [dict(base, seed=s, status="error", error=_error_text(e)) for s in range(n_seeds)]


def _error_text(e: BaseException) -> str:
    message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
    return message if message else traceback.format_exc(limit=3).splitlines()[-1][:200]


def _measure(cell: Cell, family: Family, programs: _Programs, seed_array, n_seeds: int, per_device: int,
             available: int | None, *, run_id: str, cell_id: str) -> list[dict[str, Any]]:
    base = _base_row(cell, run_id, cell_id)
    if cell.separation == "topk" and cell.topk > cell.n:
        return [dict(base, seed=s, status="skipped",
                     error=f"topk = {cell.topk} is more than n = {cell.n} stored pairs; top-k needs n >= k")
                for s in range(n_seeds)]
    needed = estimate_bytes(family, per_device)
    if available is not None and needed > available:
        return [dict(base, seed=s, status="skipped",
                     error=f"needs about {needed / 2**30:.2f} GiB per device, the device has {available / 2**30:.2f} GiB free")
                for s in range(n_seeds)]
    try:
        args = cell_args(cell, family, programs.mesh)
        compiled, compile_s = programs.get(family, args)
        start = time.perf_counter()
        metrics = programs.run(family, compiled, seed_array, args)
        run_s = time.perf_counter() - start
        if not bool(np.all(np.asarray(metrics.solved))):
            # Rank-deficient keys for some seed: rerun the cell with the eigenvalue fallback.
            family = family._replace(fallback=True)
            compiled, extra = programs.get(family, args)
            compile_s += extra
            start = time.perf_counter()
            metrics = programs.run(family, compiled, seed_array, args)
            run_s = time.perf_counter() - start
        values = {k: np.asarray(v)[:n_seeds] for k, v in metrics._asdict().items()}
        if not family.baseline:
            cos, dist, base_compile_s, base_run_s = programs.baselines(family, seed_array, args)
            values["baseline_cos"], values["baseline_dist"] = cos[:n_seeds], dist[:n_seeds]
            compile_s, run_s = compile_s + base_compile_s, run_s + base_run_s
    except Exception as e:  # recorded, and the sweep goes on
        return [dict(base, seed=s, status="error", error=_error_text(e)) for s in range(n_seeds)]
    flops = base["flops"]
    rows = []
    for i in range(n_seeds):
        metric_values = {k: float(values[k][i]) for k in
                         ("cos_mean", "cos_std", "dist_mean", "acc", "baseline_cos", "baseline_dist")}
        finite = all(math.isfinite(v) for v in metric_values.values())
        if cell.kernel == "attention":
            method = kernels.SEPARATION_REGISTRY[cell.separation].method
        else:
            method = kernels.METHOD_NAMES[int(values["method"][i])]
        rows.append(dict(
            base, seed=i, **metric_values, acc_queries=int(values["acc_queries"][i]), method=method,
            compile_s=compile_s / n_seeds, run_s=run_s / n_seeds,
            gflops=flops / (run_s / n_seeds) / 1e9 if run_s > 0 else None,
            status="ok" if finite else "nan",
            error=None if finite else "non-finite metrics (overflow, NaN scores or a singular solve)",
        ))
    return rows


def _identity_row(cell: Cell, run_id: str, cell_id: str) -> dict[str, Any]:
    """What the cell is: plain copies of its settings, which nothing can make fail."""
    return dict(run_id=run_id, cell_id=cell_id, kernel=cell.kernel, patterns=cell.patterns, dtype=cell.dtype,
                d=cell.d, n=cell.n, dv=cell.dv, noise=cell.noise,
                **{k: getattr(cell, k) for k in (*names.KNOBS, "mask")})


def cell_flops(cell: Cell) -> float:
    """Analytic FLOPs of one seed of a cell."""
    if cell.kernel == "attention":
        return kernels.attention_flops(cell.n, cell.d, cell.dv, cell.queries, cell.steps)
    return kernels.matrix_flops(cell.kernel, cell.n, cell.d, cell.dv, cell.queries, _knob(cell, "passes"))


def split_cells(spec: SweepSpec, finished: set[str], processes: int,
                method: str) -> tuple[Callable[[Cell], int], list[float]]:
    """The process each unfinished cell of a grid runs on, and each process's estimated seconds:
    whole families (every cell one compiled program serves: a setting with its every n, and
    the settings that share a family, such as pinv and ridge) go to one process, so each family
    compiles once, balanced by estimated cost (bench.cluster.split). Every process computes
    the same."""
    from bench import cluster

    costs: dict[Family, float] = {}
    for cell in spec.cells(auto_method=method):
        if cell.id in finished:
            continue
        family = family_of(cell)
        flops = spec.seeds * cell_flops(cell)
        costs[family] = costs.get(family, cluster.COMPILE_S) + flops / cluster.NOMINAL_FLOPS_PER_S
    items = list(costs.items())
    owner = cluster.split(items, processes)
    return (lambda cell: owner.get(family_of(cell), 0)), cluster.loads(items, owner, processes)


def _base_row(cell: Cell, run_id: str, cell_id: str) -> dict[str, Any]:
    """The identity row with the cell's analytic values: theory, baselines, FLOPs."""
    flops = cell_flops(cell)
    return dict(
        _identity_row(cell, run_id, cell_id),
        baseline_cos_theory=_analytic(theory.baseline_cos, cell.dv, cell.patterns),
        baseline_dist_theory=_analytic(theory.baseline_dist, cell.dv, cell.patterns),
        theory_cos=_analytic(theory.cell_cos, cell),
        flops=flops,
    )


def _analytic(formula: Callable[..., float], *args) -> float | None:
    """An analytic value, or None where it is unknown or cannot be computed: an extreme but valid
    setting (beta 200 on +-1 keys, noise 1e200, lambda 1e300) overflows the closed form, and
    that must leave the cell's measured row intact, not crash the sweep (nor every resume of it)."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = float(formula(*args))
    except (ArithmeticError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x
