"""The nested-dictionary sweep (``run_all.py --nested``): every form x depth x branching x
collision x d x reader x its knobs, over seeds, one parquet part per cell in the run store.

A cell generates one tree per seed (nested.generate), draws Gaussian codebooks for its symbols
(keys and values, d coordinates each: the stacked baseline feeds a read's output back as a
query), queries min(#paths, queries) of its readable paths exactly, and reads them with one of
the readers:

- ``soft``, ``sparse``, ``topk``: the level-by-level read of kernels.nested (k: the beam);
- ``flat_attention``: every path as one composite key (nested.flat.compose: ``composition``) in
  one softmax attention memory;
- ``flat_pinv``: the same composite keys in one pseudoinverse memory;
- ``stacked``: depth reads over one memory of every level's slots (nested.flat.stacked_memory).

Trees of one shape class are padded to the same arrays (level l: branching^l nodes of
branching slots; paths, values and slots: the most a tree of that depth and branching has), so
one compiled program per family (reader, depth, branching, d, knobs that change the program)
serves every seed, form, collision fraction and beta. Metrics per seed: cosine and distance of
the read value to the true leaf value, nearest-leaf accuracy (nearest among every stored
value), the weight on the true path (hierarchical readers), read latency per query batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import numpy as np
from tqdm import tqdm

READERS = ("soft", "sparse", "topk", "flat_attention", "flat_pinv", "stacked")
HIERARCHICAL = ("soft", "sparse", "topk")
# Which knob each reader reads (the others are None in its rows).
READS_BETA = ("soft", "sparse", "topk", "flat_attention", "stacked")
READS_COMPOSITION = ("flat_attention", "flat_pinv")
# A sweep cell's tree may hold at most this many slots (paths, values): its padded arrays and
# the nearest-value scan stay well under a GiB (the perf test reads a million leaves directly).
MAX_SLOTS = 2**18
KERNEL = "nested"
DEFAULT_SHARING = 0.5
# Forms whose every stored path has a value of its own (cartesian repeats inner values, a DAG
# reaches one value by several paths): where the flat pinv memory's theory holds.
DISTINCT_VALUES = ("independent", "collision", "random")
# Forms whose keys are fresh in every node: where the beam's bracket (k > 1) holds.
FRESH_KEYS = ("independent", "dag")


@dataclass(frozen=True)
class NestedCell:
    """One cell: a tree shape and a reader; its seeds run one after another."""

    form: str
    depth: int
    branching: int
    collision: float
    d: int
    mode: str
    composition: str | None
    similarity: str
    beta: float | None
    k: int | None
    queries: int
    dtype: str
    # dag form: the fraction of nested values that reuse another parent's sub-dictionary (None
    # for the other forms); vary_branching: nodes below the root draw 1..branching keys.
    sharing: float | None = None
    vary_branching: bool = False

    @property
    def id(self) -> str:
        setting = dataclasses.asdict(self)
        # Cells at the settings every run had before these were axes keep their ids (resume).
        if setting["sharing"] in (None, DEFAULT_SHARING):
            del setting["sharing"]
        if not setting["vary_branching"]:
            del setting["vary_branching"]
        blob = json.dumps({"kernel": KERNEL, **setting}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def reader(self) -> str:
        extra = [f"k={self.k}"] if self.k else []
        extra += [self.composition] if self.composition else []
        extra += [f"beta={self.beta:g}"] if self.beta is not None else []
        return " ".join([self.mode.replace("_", " "), *extra])

    def label(self) -> str:
        shape = f"b=1..{self.branching}" if self.vary_branching else f"b={self.branching}"
        shared = f" sharing={self.sharing:g}" if self.sharing is not None else ""
        return (f"nested {self.form} depth={self.depth} {shape} collision={self.collision:g}{shared} d={self.d} "
                f"{self.reader()}")


def max_slots(depth: int, branching: int) -> int:
    """The most slots (and so paths and values) a tree of this depth and branching holds."""
    return sum(branching**l for l in range(1, depth + 1))


def cells(spec) -> list[NestedCell]:
    """Every cell of a nested spec, grouped so each family's cells run together."""
    out = []
    for depth in spec.depth:
        for branching in spec.branching:
            for d in spec.d:
                for mode in spec.mode:
                    for composition in (spec.composition if mode in READS_COMPOSITION else (None,)):
                        for beta in (spec.beta if mode in READS_BETA else (None,)):
                            for k in (spec.topk if mode == "topk" else (None,)):
                                for form, collision, sharing, vary in _shapes(spec):
                                    out.append(NestedCell(form, depth, branching, collision, d, mode, composition,
                                                          spec.similarity[0], beta, k,
                                                          min(spec.acc_queries, max_slots(depth, branching)),
                                                          spec.dtype, sharing, vary))
    return out


def _shapes(spec):
    """(form, collision, sharing, vary_branching) of every tree a spec asks for: collision only
    where the form reads it (collision, random), sharing only for dag."""
    for form in spec.form:
        for collision in (spec.collision if form in ("collision", "random") else (0.0,)):
            for sharing in (spec.sharing if form == "dag" else (None,)):
                for vary in spec.vary_branching:
                    yield form, collision, sharing, vary


def check(spec) -> None:
    """SpecError for a nested spec that cannot run (before anything is written)."""
    from bench.spec import SpecError

    for depth in spec.depth:
        for branching in spec.branching:
            if max_slots(depth, branching) > MAX_SLOTS:
                raise SpecError(f"depth {depth}, branching {branching}: a tree of up to {max_slots(depth, branching)} "
                                f"slots is more than the {MAX_SLOTS} a sweep cell holds; use a smaller --depth or "
                                "--branching")
    if "stacked" in spec.mode and spec.dv not in (None, *spec.d):
        raise SpecError("--dv: the stacked reader feeds outputs back as queries, values need d coordinates; drop --dv")
    if len(spec.similarity) != 1:
        raise SpecError(f"similarity: give one similarity for --nested, got {','.join(spec.similarity)}")


# --- one seed's data --------------------------------------------------------------------------------


class SeedData(NamedTuple):
    tree: Any
    keys: np.ndarray        # (key symbols, d) codebook
    values: np.ndarray      # (value symbols, d) codebook
    chosen: np.ndarray      # which paths are queried
    paths: np.ndarray       # (q, depth, d)
    lengths: np.ndarray     # (q,)
    targets: np.ndarray     # (q,) value ids
    slots: np.ndarray       # (q,) target slots (unpadded numbering)
    stored: tuple           # every readable path: (paths (P, depth, d), lengths (P,), value ids (P,))
    competitors: np.ndarray  # (q, depth) nested.build.path_competitors of the queried paths


@lru_cache(maxsize=128)  # every reader of a tree shape reuses its seeds' trees
def seed_data(form: str, depth: int, branching: int, collision: float, d: int, queries: int, seed: int,
              sharing: float | None = None, vary_branching: bool = False) -> SeedData:
    """The tree, codebooks and queries of one seed (shared by every reader of the cell)."""
    from nested import build, generate

    tree = build.compile_tree(generate.generate(generate.TreeSpec(
        form, depth=depth, branching=branching, vary_branching=vary_branching, collision=collision,
        sharing=DEFAULT_SHARING if sharing is None else sharing, seed=seed)))
    K = build.gaussian_codebook(tree.key_symbols, d, 2 * seed)
    V = build.gaussian_codebook(tree.value_symbols, d, 2 * seed + 1)
    count = len(tree.paths)
    rng = np.random.default_rng(seed)
    chosen = np.arange(count) if count <= queries else np.sort(rng.choice(count, queries, replace=False))
    stored = build.query_paths(tree, K)
    paths, lengths, targets = (x[chosen] for x in stored)
    return SeedData(tree, K, V, chosen, paths, lengths, targets, build.target_slots(tree, chosen), stored,
                    build.path_competitors(tree, chosen))


class Family(NamedTuple):
    """What one compiled read program is specialised to."""

    mode: str
    depth: int
    branching: int
    d: int
    queries: int
    similarity: str
    k: int | None
    composition: str | None

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(self.branching**l for l in range(self.depth))

    @property
    def slots(self) -> int:
        return max_slots(self.depth, self.branching)

    @property
    def composite_dim(self) -> int:
        return self.d * self.depth if self.composition == "concat" else self.d


def family_of(cell: NestedCell) -> Family:
    return Family(cell.mode, cell.depth, cell.branching, cell.d, cell.queries, cell.similarity, cell.k,
                  cell.composition)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]) if len(x) < rows else x


def inputs(f: Family, data: SeedData, seed: int, dtype) -> dict[str, Any]:
    """The padded arrays of one seed for family ``f``'s program."""
    from nested import build, flat

    q, tree = len(data.targets), data.tree
    out = dict(paths=_pad(data.paths.astype(dtype), f.queries), lengths=_pad(data.lengths, f.queries) + (
        np.arange(f.queries) >= q), targets=_pad(data.targets, f.queries), valid=np.arange(f.queries) < q,
               codebook=_pad(data.values.astype(dtype), f.slots), known=np.arange(f.slots) < len(data.values))
    if f.mode in HIERARCHICAL:
        # Weights go down by scatter: identical sub-dictionaries are stored once (DAG, cartesian
        # and chance repeats), so a node's number of parents differs from tree to tree.
        levels = build.padded_levels(tree, data.keys.astype(dtype), data.values.astype(dtype), f.nodes, f.branching,
                                     gather=False)
        out["levels"] = levels
        out["slots"] = _pad(build.repad_slots(tree, data.slots, data.lengths, f.branching), f.queries)
    elif f.mode in READS_COMPOSITION:
        all_paths, all_lengths, all_targets = data.stored
        stored = flat.compose(all_paths, all_lengths, f.composition, seed).astype(dtype)
        out["stored_keys"] = _pad(stored, f.slots)
        out["stored_values"] = _pad(data.values[all_targets].astype(dtype), f.slots)
        out["stored_valid"] = np.arange(f.slots) < len(stored)
        out["query_keys"] = _pad(flat.compose(data.paths, data.lengths, f.composition, seed).astype(dtype), f.queries)
    else:  # stacked
        memory = flat.stacked_memory(tree, data.keys.astype(dtype), data.values.astype(dtype), seed)
        out["stored_keys"] = _pad(memory.keys, f.slots)
        out["stored_values"] = _pad(memory.values, f.slots)
        out["stored_valid"] = np.arange(f.slots) < len(memory.keys)
        out["root"] = memory.root
    return out


def read_program(f: Family) -> Callable:
    """(inputs, beta) -> (values (Q, d), weight on the true path (Q,)) for family ``f``."""
    import jax.numpy as jnp

    from kernels import matrix
    from kernels import nested as kn

    def run(x, beta):
        if f.mode in HIERARCHICAL:
            r = kn.read(x["levels"], x["paths"], x["lengths"], mode=f.mode, similarity=f.similarity, beta=beta,
                        k=f.k or 1, targets=x["slots"])
            return r.values, r.target
        none = jnp.full(x["lengths"].shape, jnp.nan, x["paths"].dtype)
        if f.mode == "flat_attention":
            return kn.flat_read(x["stored_keys"], x["stored_values"], x["stored_valid"], x["query_keys"],
                                similarity=f.similarity, beta=beta), none
        if f.mode == "flat_pinv":
            # Padding rows are zero: pinv([K; 0]) = [K^+, 0], the same memory as the paths alone.
            W = matrix.pinv(x["stored_keys"], x["stored_values"])
            return x["query_keys"] @ W, none
        state = x["root"][None, :] + x["paths"][:, 0]
        out = jnp.zeros_like(state)
        for l in range(f.depth):
            state = kn.flat_read(x["stored_keys"], x["stored_values"], x["stored_valid"], state,
                                 similarity=f.similarity, beta=beta)
            out = jnp.where((x["lengths"] == l + 1)[:, None], state, out)
            if l + 1 < f.depth:
                state = state + x["paths"][:, l + 1]
        return out, none

    return run


def score(out, weight, x):
    """Metrics of one seed over its valid queries, in float64 where JAX has it: cosine and
    distance to the true value, nearest-value accuracy, the baseline cosine of two different
    paths' true values, the mean weight on the true path and the share of queries that give
    it any weight (top-k: the beam kept it; sparse: it is in the support)."""
    import jax
    import jax.numpy as jnp

    from kernels.metrics import accumulate_dtype, row_cos_dist

    wide = accumulate_dtype(out.dtype)
    valid = x["valid"]
    count = jnp.maximum(valid.sum(), 1)
    out, V = out.astype(wide), x["codebook"].astype(wide)
    true = V[x["targets"]]

    def mean(v):
        return jnp.sum(jnp.where(valid, v, 0.0)) / count

    c, dist = row_cos_dist(out, true, wide)
    # Nearest stored value, a block of queries at a time (values: up to MAX_SLOTS rows).
    sq = jnp.sum(V * V, -1)
    q, block = out.shape[0], min(out.shape[0], 128)
    blocks = jnp.pad(out, ((0, -q % block), (0, 0))).reshape(-1, block, out.shape[1])
    nearest = jax.lax.map(lambda b: jnp.argmin(jnp.where(x["known"][None], sq[None] - 2 * b @ V.T, jnp.inf), -1),
                          blocks).reshape(-1)[:q]
    other = V[x["targets"][(jnp.arange(valid.shape[0]) + 1) % count]]
    base_cos, base_dist = row_cos_dist(true, other, wide)
    cmean = mean(c)
    return dict(cos_mean=cmean, cos_std=jnp.sqrt(jnp.maximum(mean(c * c) - cmean**2, 0.0)), dist_mean=mean(dist),
                acc=mean((nearest == x["targets"]).astype(wide)), baseline_cos=mean(base_cos),
                baseline_dist=mean(base_dist), path_mass=mean(weight.astype(wide)),
                path_hit=mean((weight > 0).astype(wide)), acc_queries=valid.sum())


def read_flops(f: Family, data: SeedData) -> float:
    """Analytic FLOPs of one seed's reads (multiply-add = 2), at the padded sizes the program
    computes; flat_pinv includes writing its memory."""
    q, d, b, n_paths = len(data.targets), f.d, f.branching, len(data.tree.paths)
    if f.mode in ("soft", "sparse"):
        return float(q * sum(2 * n * b * d for n in f.nodes) + sum(2 * f.nodes[m - 1] * b * d for m in data.lengths))
    if f.mode == "topk":
        return float(q * (f.depth * 2 * (f.k or 1) * b * d + 2 * (f.k or 1) * d))
    D = f.composite_dim
    if f.mode == "flat_attention":
        return float(q * 2 * n_paths * (D + d))
    if f.mode == "flat_pinv":
        return float(2 * n_paths * D * (D + d) + D**3 / 3 + 2 * D * D * d + q * 2 * D * d)
    return float(q * f.depth * 2 * f.slots * 2 * d)


class Theory(NamedTuple):
    """What nested.theory predicts for one seed's queries (None where it does not hold)."""

    path_mass: float | None = None      # soft: mean-field weight on the true path
    acc: float | None = None            # top-1: the probability greedy selection reads the path
    hit: float | None = None            # top-k: the beam keeps the path (upper bound; exact at k = 1)
    hit_low: float | None = None        # top-k: the same, every candidate a sibling (pessimistic)
    cos: float | None = None            # flat pinv: the mean sqrt(leverage) of the queried paths


def theory_values(cell: NestedCell, data: SeedData, seed: int) -> Theory:
    """nested.theory for one seed, averaged over the queried paths: dot-product scores of
    exact queries over Gaussian keys for the selective readers, and any scores for the flat
    pinv memory (a property of its stored keys)."""
    from nested import flat, theory

    if cell.mode == "flat_pinv":
        if cell.form not in DISTINCT_VALUES:
            return Theory()
        paths, lengths, _ = data.stored
        return Theory(cos=theory.flat_pinv(flat.compose(paths, lengths, cell.composition, seed), data.chosen).cos)
    if cell.similarity != "dot":
        return Theory()
    if cell.mode == "soft":
        return Theory(path_mass=float(np.mean([theory.true_path_weight(int(m), cell.branching, cell.d, cell.beta)
                                               for m in data.lengths])))
    if cell.mode == "topk":
        if cell.k > 1 and cell.form not in FRESH_KEYS:
            return Theory()
        hit = float(np.mean([theory.beam_path_hit(c, cell.d, cell.k) for c in data.competitors]))
        low = float(np.mean([theory.beam_path_hit(c, cell.d, cell.k, pessimistic=True) for c in data.competitors]))
        return Theory(acc=hit if cell.k == 1 else None, hit=hit, hit_low=low)
    return Theory()


class _Compiled:
    """The compiled programs of each family: its read, and the scoring of a read (separate, so
    the read is timed alone)."""

    def __init__(self):
        self.programs: dict[Family, tuple[Any, Any]] = {}
        self.count = 0

    def get(self, f: Family, x, beta) -> tuple[Any, Any, float]:
        import jax

        if f in self.programs:
            return (*self.programs[f], 0.0)
        start = time.perf_counter()
        reader = jax.jit(read_program(f)).lower(x, beta).compile()
        out_shapes = reader.out_info
        scorer = jax.jit(score).lower(jax.ShapeDtypeStruct(out_shapes[0].shape, out_shapes[0].dtype),
                                      jax.ShapeDtypeStruct(out_shapes[1].shape, out_shapes[1].dtype), x).compile()
        self.programs[f] = (reader, scorer)
        self.count += 1
        return reader, scorer, time.perf_counter() - start


def measure(cell: NestedCell, seeds: int, programs: _Compiled, run_id: str) -> list[dict[str, Any]]:
    """The rows of one cell (one per seed); an exception is recorded in them, the sweep goes on."""
    import jax
    import jax.numpy as jnp

    base = dict(run_id=run_id, cell_id=cell.id, kernel=KERNEL, patterns="gaussian", dtype=cell.dtype, d=cell.d,
                dv=cell.d, noise=0.0, similarity=cell.similarity, beta=cell.beta, topk=cell.k, form=cell.form,
                depth=cell.depth, branching=cell.branching, collision=cell.collision, sharing=cell.sharing,
                vary_branching=cell.vary_branching, mode=cell.mode, composition=cell.composition, method=cell.mode)
    f = family_of(cell)
    rows = []
    try:
        beta = jnp.asarray(cell.beta if cell.beta is not None else 1.0, cell.dtype)
        compile_s = 0.0
        for seed in range(seeds):
            data = seed_data(cell.form, cell.depth, cell.branching, cell.collision, cell.d, cell.queries, seed,
                             cell.sharing, cell.vary_branching)
            x = jax.device_put(inputs(f, data, seed, np.dtype(cell.dtype)))
            reader, scorer, took = programs.get(f, x, beta)
            compile_s += took
            start = time.perf_counter()
            out, weight = jax.block_until_ready(reader(x, beta))
            read_s = time.perf_counter() - start
            values = {k: float(v) for k, v in scorer(out, weight, x).items()}
            run_s = time.perf_counter() - start
            theory = theory_values(cell, data, seed)
            flops = read_flops(f, data)
            selective = cell.mode in HIERARCHICAL
            finite = all(math.isfinite(v) for k, v in values.items() if k not in ("path_mass", "path_hit"))
            rows.append(dict(base, seed=seed, n=len(data.tree.paths), **{k: v for k, v in values.items()
                                                                          if k not in ("acc_queries", "path_mass",
                                                                                       "path_hit")},
                             acc_queries=int(values["acc_queries"]),
                             path_mass=values["path_mass"] if selective else None,
                             path_hit=values["path_hit"] if selective else None,
                             path_mass_theory=theory.path_mass, theory_acc=theory.acc, path_hit_theory=theory.hit,
                             path_hit_theory_low=theory.hit_low, theory_cos=theory.cos, baseline_cos_theory=0.0,
                             baseline_dist_theory=math.sqrt(2.0), read_s=read_s, run_s=run_s, flops=flops,
                             gflops=flops / read_s / 1e9 if read_s > 0 else None, compile_s=0.0,
                             status="ok" if finite else "nan",
                             error=None if finite else "non-finite metrics"))
        for row in rows:
            row["compile_s"] = compile_s / seeds
    except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
        from bench.sweep import _error_text

        return [dict(base, seed=s, status="error", error=_error_text(e)) for s in range(seeds)]
    return rows


def run(spec, run_dir, manifest: dict[str, Any], *, save: Callable[[], None], progress: bool | None = None) -> None:
    """Every unfinished cell of a nested spec into ``run_dir`` (parts, cell_order and the
    compile count in ``manifest``, as bench.sweep.run_sweep does for the memory grid)."""
    from bench import store

    done = store.finished_cells(run_dir)
    if "cell_ids" not in manifest:
        manifest["cell_ids"] = store.CELL_IDS
        save()
    every = cells(spec)
    todo = [c for c in every if c.id not in done]
    programs = _Compiled()
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(every), initial=len(every) - len(todo), desc="nested cells", unit="cell", disable=not show,
              file=sys.stderr) as bar, store.PartWriter(run_dir) as writer:
        for cell in todo:
            bar.set_postfix_str(cell.label(), refresh=False)
            writer.submit(cell.id, measure(cell, spec.seeds, programs, run_dir.name))
            bar.update()
    manifest["compiled_programs"] = manifest.get("compiled_programs", 0) + programs.count
    manifest.setdefault("compile_wait_s", 0.0)
    manifest["cell_order"] = [c.id for c in every]
