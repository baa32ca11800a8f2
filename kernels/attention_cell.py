"""One sweep cell of an attention memory, batched over seeds: recall a sample of stored keys
by attention over n streamed pairs and reduce to the same metrics as a matrix-memory cell.

The stored pairs are never held: every pass over the memory regenerates them chunk by chunk
from the pair stream (the same pairs a matrix memory of the same d, dv and patterns sees),
so memory is O(queries x (d + chunk)) whatever n is, and one compiled program serves every
n, beta, degree, noise level and mask fraction of a family. Loops per seed, each a plain
fori_loop with one random-number call site: the queries (the first chunks), one attention
pass per step, the nearest-other-value scan, the random baselines.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels import attention, metrics, streams


class AttentionFamily(NamedTuple):
    """Static settings of one compiled program of attention cells.

    queries: how many stored keys are recalled (the first min(n, queries) pairs: pairs are
    i.i.d., so they are a uniform random sample). k: top-k width. steps > 1: auto-association
    (values are the keys themselves; each output is the next query). noisy / masked: whether
    queries get Gaussian noise / zeroed coordinates (the amounts are traced). baseline: as in
    MatrixFamily (False: NaN, computed once per stream by the sweep)."""

    similarity: str
    separation: str
    d: int
    dv: int
    patterns: str
    dtype: str = "float32"
    chunk: int = 512
    queries: int = 1024
    k: int = 1
    heads: int = 1
    steps: int = 1
    noisy: bool = False
    masked: bool = False
    keep: int = 0
    baseline: bool = True

    @property
    def kept_chunks(self) -> int:
        """Chunks the cache holds (its buffer: streams.new_cache): the first pass draws them
        once, later passes read them (keep: 0, or the most pairs a cell of the family stores;
        n > keep gives NaN metrics)."""
        return max(1, -(-self.keep // self.chunk))


class AttentionKnobs(NamedTuple):
    """Traced knobs: inverse temperature, polynomial degree, fraction of query coordinates zeroed."""

    beta: jax.Array
    degree: jax.Array
    mask: jax.Array


def attention_args(family: AttentionFamily, n, noise=0.0, beta=1.0, degree=3.0, mask=0.0):
    """Dynamic arguments of run_attention_cell with the dtypes its compiled program expects."""
    dtype = jnp.dtype(family.dtype)
    if isinstance(n, int) and not 0 <= n < 2**31:
        raise ValueError(f"n = {n} does not fit the int32 pair counter; use n < 2^31")
    return (metrics.scalar(n, jnp.int32), metrics.scalar(noise, dtype),
            AttentionKnobs(metrics.scalar(beta, dtype), metrics.scalar(degree, dtype), metrics.scalar(mask, dtype)))


@partial(jax.jit, static_argnums=0)
def run_attention_cell(family: AttentionFamily, seeds, n, noise, knobs: AttentionKnobs,
                       table=None) -> metrics.CellMetrics:
    """seeds: (S,) int32; n: int scalar (traced); noise: relative query noise; knobs: traced.
    Metrics (per seed) are over the recalled sample: cosine and distance to the true value,
    nearest-neighbour accuracy against all n stored values, random baselines as for a matrix
    cell. ``method`` is 0 and ``solved`` True (no solve)."""
    return attention_cell_program(family)(seeds, streams.new_cache(family, seeds.shape[0]), n, noise, knobs, table)[0]


def attention_cell_program(family: AttentionFamily):
    """The function a sweep compiles: (seeds, cache, n, noise, knobs[, table]) ->
    (CellMetrics, cache), the cache buffer (streams.new_cache) handed back so it can be donated."""
    f = family
    attention.check_settings(f.similarity, f.separation, d=f.d, dv=f.dv, heads=f.heads, steps=f.steps, k=f.k)

    def program(seeds, cache, n, noise, knobs, table=None):
        return jax.vmap(lambda seed, buf: _run_seed(f, seed, buf, n, noise, knobs, table))(seeds, cache)

    return program


def _run_seed(f: AttentionFamily, seed, cache, n, noise, knobs: AttentionKnobs, table):
    dtype = jnp.dtype(f.dtype)
    wide = metrics.accumulate_dtype(dtype)
    n = jnp.asarray(n, jnp.int32)
    chunk, Q, h = f.chunk, f.queries, f.heads
    sim, sep = attention.SIMILARITY_REGISTRY[f.similarity], attention.SEPARATION_REGISTRY[f.separation]
    stream = streams.open_stream(seed, d=f.d, dv=f.dv, patterns=f.patterns, chunk=chunk, dtype=dtype, table=table)
    auto = f.steps > 1
    noise_std = jnp.asarray(noise, dtype) * stream.scale
    sep_knobs = attention.Knobs(knobs.beta.astype(dtype), knobs.degree.astype(dtype))

    def only_valid(j, keys, values):
        values = keys if auto else values
        valid = streams.valid_rows(j, chunk, n)
        return jnp.where(valid[:, None], keys, 0), jnp.where(valid[:, None], values, 0), valid

    pairs = lambda j: only_valid(j, *stream.pairs(j))
    # The first attention pass draws every chunk (and keeps it when the family keeps pairs);
    # later passes read the kept pairs or draw them again (see AttentionFamily.keep).
    if f.keep:
        kept_pairs = lambda j, cache: only_valid(j, *streams.read_kept(stream, cache, j))
    else:
        kept_pairs = lambda j, cache: pairs(j)

    # Loop 1: the queries, the first m = min(n, Q) pairs (corrupted), and their true values.
    m = jnp.minimum(n, Q)
    lead_max = -(-Q // chunk)

    def take(j, bufs):
        keys, values, valid = pairs(j)
        queries = streams.queries_of(stream, j, keys, noise_std, knobs.mask, noisy=f.noisy, masked=f.masked)
        queries = jnp.where(valid[:, None], queries, 0)
        return tuple(lax.dynamic_update_slice_in_dim(buf, x, j * chunk, 0) for buf, x in zip(bufs, (queries, values)))

    qbuf, vbuf = lax.fori_loop(0, (m + chunk - 1) // chunk, take,
                               (jnp.zeros((lead_max * chunk, f.d), dtype), jnp.zeros((lead_max * chunk, f.dv), dtype)))
    queries, true_values = qbuf[:Q], vbuf[:Q]
    num_chunks = (n + chunk - 1) // chunk

    # Top-k and max over kept pairs carry the best keys' rows through the pass and read their
    # values from the cache once at its end (the same values: the cache holds the chunks as
    # drawn); over pairs drawn again they carry the values (a row drawn on its own is not
    # always its chunk's row to the last bit: sphere patterns are normalised per draw).
    by_rows = bool(f.keep) and f.separation in attention.BY_ROWS
    dvh = f.dv // h

    def update(state, scores, j, values, valid):
        if by_rows:
            return attention.top_rows_update(state, scores, j * chunk, valid)
        return sep.update(state, scores, attention.split_heads(values, h), valid, sep_knobs)

    def result(state):
        if by_rows:
            top_s, top_i = state
            state = (top_s, _kept_values(cache, top_i, 0 if auto else f.d, dvh))
        return attention.merge_heads(sep.result(state, sep_knobs))

    def init():
        return attention.top_rows_init(sep, h, Q, f.k, dtype) if by_rows else sep.init(h, Q, dvh, f.k, dtype)

    # Loops 2..steps+1: one attention pass over the whole memory per update.
    for step in range(f.steps):
        qh = sim.prepare(attention.split_heads(queries, h))

        def attend(j, carry, qh=qh, first=step == 0):
            state, cache = carry
            if first and f.keep:
                both, cache = streams.draw_and_keep(stream, cache, j)
                keys, values, valid = only_valid(j, both[:, :f.d], both[:, f.d:])
            elif first:
                keys, values, valid = pairs(j)
            else:
                keys, values, valid = kept_pairs(j, cache)
            kh = sim.prepare(attention.split_heads(keys, h))
            return update(state, sim.scores(qh, kh), j, values, valid), cache

        state, cache = lax.fori_loop(0, num_chunks, attend, (init(), cache))
        queries = result(state)
    recalled = queries

    # The nearest other stored value of each recalled one.
    r2 = metrics.row_dot(recalled, recalled)
    recalled_t = recalled.T

    def scan(j, nearest):
        _, values, valid = kept_pairs(j, cache)
        return metrics.nearest_other(nearest, recalled_t, r2, values, valid, j * chunk)

    nearest = lax.fori_loop(0, num_chunks, scan, jnp.full((Q,), jnp.inf, dtype))
    own = metrics.squared_distance_to_own(recalled, true_values)

    in_sample = jnp.arange(Q) < m
    cos, dist = metrics.row_cos_dist(recalled, true_values, wide)
    moments = metrics.Moments.zero(wide).add(cos, dist, in_sample.astype(wide))
    bad = ~jnp.all(jnp.where(in_sample[:, None], jnp.isfinite(recalled), True))
    if f.keep:
        bad = bad | (n > f.kept_chunks * chunk)  # pairs beyond the cache were never kept
    base = metrics.baseline(stream, wide) if f.baseline else metrics.no_baseline(wide)
    out = metrics.finish(moments, jnp.sum(in_sample & (own < nearest)), m, base, bad=bad, method=0, solved=True,
                         wide=wide)
    return out, cache


def _kept_values(cache, rows, col0: int, width: int):
    """Values of the given kept rows per head: rows (h, q, w) int32 (row r is row r % chunk of
    chunk r // chunk), head i's values columns col0 + i * width on -> (h, q, w, width)."""
    flat = cache.reshape(-1, cache.shape[-1])
    take = lambda r, col: lax.dynamic_slice(flat, (r, col), (1, width))[0]
    per_head = jax.vmap(jax.vmap(take, (0, None)), (0, None))  # over queries, then their w rows
    cols = col0 + width * jnp.arange(rows.shape[0], dtype=jnp.int32)
    return jax.vmap(per_head)(rows, cols)


def attention_flops(n: int, d: int, dv: int, queries: int, steps: int = 1) -> float:
    """Analytic floating-point operations of one cell and seed (multiply-add = 2; a distance
    counts as a dot product): per update, scores 2 m n d and the blend 2 m n dv; then the
    nearest-neighbour scan 2 m n dv, for m = min(n, queries) recalled keys."""
    m = min(n, queries)
    return float(steps * (2 * m * n * d + 2 * m * n * dv) + 2 * m * n * dv)
