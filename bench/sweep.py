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
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

import kernels
from bench import capacity, environment, store, theory
from bench.spec import GLOVE_WORDS, Cell, SweepSpec

# A run's working set is estimated from the arrays it holds; XLA temporaries add to that.
_MEMORY_HEADROOM = 2.0
Shape = kernels.CellShape | kernels.AttentionShape


@dataclass
class _Programs:
    """Compiled programs, one per family (CellShape); compile time is charged to the cell that
    needed the program first."""

    mesh: Mesh
    compiled: dict[tuple[str, Shape], Any] = field(default_factory=dict)
    compile_count: int = 0

    def get(self, shape: Shape, args) -> tuple[Any, float]:
        key = (type(shape).__name__, shape)  # NamedTuples of equal fields compare equal
        if key in self.compiled:
            return self.compiled[key], 0.0
        batch = NamedSharding(self.mesh, PartitionSpec("seeds"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        runner = kernels.run_attention_cell if isinstance(shape, kernels.AttentionShape) else kernels.run_cell
        fn = jax.jit(partial(runner, shape), in_shardings=(batch,) + (replicated,) * (len(args) - 1),
                     out_shardings=batch)
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        self.compiled[key] = compiled
        self.compile_count += 1
        return compiled, time.perf_counter() - start


def cell_shape(cell: Cell, spec: SweepSpec) -> Shape:
    method = kernels.default_method() if spec.method == "auto" else spec.method
    dist = kernels.TABLE if cell.patterns == "glove" else cell.patterns
    if cell.kernel == "attention":
        # The chunk of the matrix memories of the same d and dv: both see the same pairs.
        return kernels.AttentionShape(
            similarity=cell.similarity, separation=cell.separation, d=cell.d, dv=cell.dv, dist=dist,
            dtype=cell.dtype, chunk=kernels.default_chunk(cell.d, cell.dv), queries=spec.acc_queries,
            k=cell.topk or 1, heads=cell.heads, steps=cell.steps, noisy=cell.noise > 0, masked=bool(cell.mask))
    return kernels.CellShape(rule=cell.kernel, d=cell.d, dv=cell.dv, dist=dist, dtype=cell.dtype,
                             chunk=kernels.default_chunk(cell.d, cell.dv), sample=spec.acc_queries, method=method,
                             noisy=cell.noise > 0, masked=bool(cell.mask))


@lru_cache(maxsize=1)
def glove_table(mesh: Mesh) -> jax.Array:
    """The GLOVE_WORDS most frequent GloVe 6B 50-d vectors, replicated on every device."""
    from fuzzy_kv.embeddings import Embeddings

    vectors = np.asarray(Embeddings.glove().vectors[:GLOVE_WORDS], np.float32)
    return jax.device_put(vectors, NamedSharding(mesh, PartitionSpec()))


def estimate_bytes(shape: Shape, seeds_per_device: int) -> int:
    """Peak bytes of one cell on one device: independent of n by construction."""
    item = np.dtype(shape.dtype).itemsize
    if isinstance(shape, kernels.AttentionShape):
        d, dv, c, q = shape.d, shape.dv, shape.chunk, shape.queries
        width = shape.k + c if shape.separation in ("topk", "max") else c
        per_seed = item * (
            q * (3 * d + 4 * dv)                        # queries, true values, recalls, running state
            + q * shape.k * dv * 2                      # running top-k values (topk)
            + q * width * 3                             # a block of scores and weights
            + c * (3 * d + 2 * dv) * 2)                 # one chunk of keys, values, noise, masks
        return int(per_seed * seeds_per_device * _MEMORY_HEADROOM)
    d, dv, c, m = shape.d, shape.dv, shape.chunk, shape.sample
    per_seed = (
        8 * (d * d + 2 * d * dv)                       # Gram, cross term, W (float64 solves)
        + item * (-(-d // c) * c) * (d + dv)           # stashed first chunks (dual solve)
        + 8 * d * d                                    # dual Gram
        + item * c * (3 * d + 3 * dv) * 2              # one chunk of keys, values, noise, recalls
        + item * m * (c * 2 + dv * 2)                  # accuracy sample and its scores
    )
    return int(per_seed * seeds_per_device * _MEMORY_HEADROOM)


def run_sweep(spec: SweepSpec, run_dir: Path, *, progress: bool | None = None,
              on_cell_done: Callable[[Cell], None] | None = None) -> dict[str, Any]:
    """Run every cell of ``spec`` not yet finished in ``run_dir`` (or, for a capacity spec,
    every search, reusing finished probes). Returns the manifest, with ``cell_order``: the
    cells whose parts make up the run, in order."""
    manifest = store.read_manifest(run_dir)
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("seeds",))
    programs = _Programs(mesh)
    seeds = list(range(spec.seeds))
    padded = seeds + [seeds[-1]] * (-len(seeds) % len(devices))  # pad to a multiple of devices
    seed_array = jax.device_put(np.array(padded, np.int32), NamedSharding(mesh, PartitionSpec("seeds")))
    available = environment.device_memory_bytes()
    done = store.finished_cells(run_dir)
    show = sys.stderr.isatty() if progress is None else progress

    def run_cell(cell: Cell) -> list[dict[str, Any]]:
        if cell.id in done:
            return store.read_part(run_dir, cell.id)
        rows = _run_one(cell, spec, programs, seed_array, len(seeds), len(padded) // len(devices), available,
                        run_id=run_dir.name)
        store.write_part(run_dir, cell.id, rows)
        done.add(cell.id)
        if on_cell_done is not None:
            on_cell_done(cell)
        return rows

    if spec.capacity:
        order = _capacity_searches(spec, run_dir, run_cell, show)
    else:
        cells = spec.cells()
        todo = [c for c in cells if c.id not in done]
        with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="cells", unit="cell", disable=not show,
                  file=sys.stderr) as bar:
            for cell in todo:
                bar.set_postfix_str(cell.label(), refresh=False)
                run_cell(cell)
                bar.update()
        order = [c.id for c in cells]
    manifest["compiled_programs"] = manifest.get("compiled_programs", 0) + programs.compile_count
    manifest["cell_order"] = order
    return manifest


def _capacity_searches(spec: SweepSpec, run_dir: Path, run_cell: Callable[[Cell], list[dict[str, Any]]],
                       show: bool) -> list[str]:
    """One capacity search per setting of ``spec``; writes capacity.parquet and returns the
    probe cells in the order run."""
    order: list[str] = []
    rows = []
    settings = spec.settings()
    with tqdm(total=len(settings), desc="capacity searches", unit="search", disable=not show,
              file=sys.stderr) as bar:
        for setting in settings:
            bar.set_postfix_str(setting.setting_label(), refresh=False)

            def probe(n: int, setting=setting) -> capacity.Probe:
                cell = dataclasses.replace(setting, n=n)
                cell_rows = run_cell(cell)
                if cell.id not in order:
                    order.append(cell.id)
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


def _run_one(cell: Cell, spec: SweepSpec, programs: _Programs, seed_array, n_seeds: int, per_device: int,
             available: int | None, *, run_id: str) -> list[dict[str, Any]]:
    shape = cell_shape(cell, spec)
    base = _base_row(cell, spec, shape, run_id)
    if cell.separation == "topk" and cell.topk > cell.n:
        return [dict(base, seed=s, status="skipped",
                     error=f"topk = {cell.topk} is more than n = {cell.n} stored pairs; top-k needs n >= k")
                for s in range(n_seeds)]
    needed = estimate_bytes(shape, per_device)
    if available is not None and needed > available:
        return [dict(base, seed=s, status="skipped",
                     error=f"needs about {needed / 2**30:.2f} GiB per device, the device has {available / 2**30:.2f} GiB free")
                for s in range(n_seeds)]
    try:
        if isinstance(shape, kernels.AttentionShape):
            args = kernels.attention_args(shape, cell.n, cell.noise, cell.beta or 1.0, cell.degree or 3.0,
                                          cell.mask or 0.0)
        else:
            args = kernels.cell_args(shape, cell.n, cell.noise, cell.lam or 0.0, cell.eta or 1.0, cell.passes or 1,
                                     cell.mask or 0.0)
        if shape.dist == kernels.TABLE:
            args = (*args, glove_table(programs.mesh))
        compiled, compile_s = programs.get(shape, (seed_array, *args))
        start = time.perf_counter()
        metrics = jax.block_until_ready(compiled(seed_array, *args))
        run_s = time.perf_counter() - start
        if not bool(np.all(np.asarray(metrics.solved))):
            # Rank-deficient keys for some seed: rerun the cell with the eigenvalue fallback.
            compiled, extra = programs.get(shape._replace(fallback=True), (seed_array, *args))
            compile_s += extra
            start = time.perf_counter()
            metrics = jax.block_until_ready(compiled(seed_array, *args))
            run_s = time.perf_counter() - start
        values = {k: np.asarray(v)[:n_seeds] for k, v in metrics._asdict().items()}
    except Exception as e:  # recorded, and the sweep goes on
        message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        tb = traceback.format_exc(limit=3).splitlines()[-1][:200]
        return [dict(base, seed=s, status="error", error=message if message else tb) for s in range(n_seeds)]
    flops = base["flops"]
    rows = []
    for i in range(n_seeds):
        metric_values = {k: float(values[k][i]) for k in
                         ("cos_mean", "cos_std", "dist_mean", "acc", "baseline_cos", "baseline_dist")}
        finite = all(math.isfinite(v) for v in metric_values.values())
        if cell.kernel == "attention":
            method = "running-top-k" if cell.separation in ("topk", "max") else "online"
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


def _base_row(cell: Cell, spec: SweepSpec, shape: Shape, run_id: str) -> dict[str, Any]:
    knobs = {k: getattr(cell, k) for k in ("lam", "eta", "passes", "similarity", "separation", "beta", "topk",
                                          "degree", "heads", "steps", "mask")}
    if cell.kernel == "attention":
        flops = kernels.attention_flops(cell.n, cell.d, cell.dv, spec.acc_queries, cell.steps)
    else:
        flops = kernels.flops(cell.kernel, cell.n, cell.d, cell.dv, spec.acc_queries, cell.passes or 1)
    return dict(
        run_id=run_id, cell_id=cell.id, kernel=cell.kernel, patterns=cell.patterns, dtype=cell.dtype,
        d=cell.d, n=cell.n, dv=cell.dv, noise=cell.noise, **knobs,
        baseline_cos_theory=theory.baseline_cos(cell.dv, cell.patterns),
        baseline_dist_theory=theory.baseline_dist(cell.dv, cell.patterns),
        theory_cos=_nan_to_none(theory.cell_cos(cell)),
        flops=flops,
    )


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x
