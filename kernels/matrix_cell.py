"""One sweep cell of a matrix memory, batched over seeds: write n streamed pairs, recall
every stored value from its (optionally corrupted) key, and reduce to metrics, with memory
independent of n and one compiled program for every n, noise, mask and knob value.

Three loops per seed, each a plain fori_loop with at most one random-number call site:

1. write: fold every chunk into the memory; keep the first chunks as drawn (the dual solve
   reads them, and they are the accuracy sample: the first min(n, queries) pairs);
2. score: read every chunk from the cache (or draw it again, see MatrixFamily.keep), recall
   it, fold cosine and distance into running moments, and scan its values for the nearest
   other value of each sampled recall;
3. baseline: independent random values for the random baselines.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels import matrix, metrics, streams


class MatrixFamily(NamedTuple):
    """Static settings of one compiled program: everything but n, noise, mask and knobs.

    queries: the most stored pairs scored for nearest-neighbour accuracy (the first
    min(n, queries): pairs are i.i.d., so they are a uniform random sample). noisy / masked:
    whether queries get noise / zeroed coordinates (the amounts are traced). keep: 0, or the
    most pairs a cell of the family stores: then the write keeps every pair and the score
    pass reads them instead of drawing them again (a cell with n > keep gets NaN metrics);
    with 0 only the first max(queries, d) are kept (the sample, the dual solve). fallback:
    include the eigenvalue pseudoinverse for rank-deficient keys; it costs compile time, so a
    sweep compiles it only for a cell whose ``solved`` came back False. baseline: whether the
    program computes the random baselines (they depend only on the stream, not on the memory
    or n); False leaves them NaN, for a sweep that computes them once per stream
    (kernels.baseline_program) instead of once per cell."""

    rule: str
    d: int
    dv: int
    patterns: str
    dtype: str = "float32"
    chunk: int = 512
    queries: int = 1024
    method: str = "gram64"
    noisy: bool = False
    masked: bool = False
    keep: int = 0
    fallback: bool = False
    baseline: bool = True

    @property
    def writer(self) -> matrix.Writer:
        return matrix.Writer(self.rule, self.d, self.dv, self.chunk, jnp.dtype(self.dtype), self.method)

    @property
    def kept_chunks(self) -> int:
        """Chunks the cache holds (its buffer: streams.new_cache)."""
        return -(-max(self.keep, self.queries, self.writer.first_rows, 1) // self.chunk)


@partial(jax.jit, static_argnums=0)
def run_matrix_cell(family: MatrixFamily, seeds, n, noise, params: matrix.Params, mask=0.0,
                    table=None) -> metrics.CellMetrics:
    """seeds: (S,) int32; n: int scalar; noise: relative query noise (std of the added
    Gaussian in units of a key coordinate's rms); params: traced knobs; mask: fraction of each
    query's coordinates zeroed (after the noise; read when family.masked); table: (V, t) real
    vectors when family.patterns is streams.TABLE. Jit-compiled once per family (and argument
    dtypes); metrics per seed."""
    return matrix_cell_program(family)(seeds, streams.new_cache(family, seeds.shape[0]), n, noise, params, mask, table)[0]


def matrix_cell_program(family: MatrixFamily):
    """The function a sweep compiles: (seeds, cache, n, noise, params, mask[, table]) ->
    (CellMetrics, cache), the cache buffer (streams.new_cache) passed in and handed back so it
    can be donated: no allocation per cell."""
    if family.rule not in matrix.RULES:
        raise ValueError(f"unknown matrix memory {family.rule!r}; use one of {', '.join(matrix.RULES)}")

    def program(seeds, cache, n, noise, params, mask=0.0, table=None):
        return jax.vmap(lambda seed, buf: _run_seed(family, seed, buf, n, noise, params, mask, table))(seeds, cache)

    return program


def _run_seed(f: MatrixFamily, seed, buffer, n, noise, params, mask, table):
    dtype = jnp.dtype(f.dtype)
    wide = metrics.accumulate_dtype(dtype)
    n = jnp.asarray(n, jnp.int32)
    chunk, Q = f.chunk, f.queries
    stream = streams.open_stream(seed, d=f.d, dv=f.dv, patterns=f.patterns, chunk=chunk, dtype=dtype, table=table)
    noise_std = jnp.asarray(noise, dtype) * stream.scale
    mask = jnp.asarray(mask, dtype)
    w = f.writer

    def only_valid(j, keys, values):
        valid = streams.valid_rows(j, chunk, n)
        return jnp.where(valid[:, None], keys, 0), jnp.where(valid[:, None], values, 0), valid

    def source(j, cache):
        return streams.draw_and_keep(stream, cache, j, streams.valid_rows(j, chunk, n))

    # The score pass reads the pairs the write kept, or draws them again (see MatrixFamily.keep).
    second = (lambda j: streams.read_kept(stream, cache, j)) if f.keep else stream.pairs

    # Loop 1: the write. It fills the cache with the first chunks as drawn.
    state, cache = matrix.fold(w, source, n, params, buffer)
    # The first rows only (the sample and the dual solve's): slicing the whole cache would copy it.
    first_chunks = -(-max(Q, w.first_rows, 1) // chunk)
    head = cache[:first_chunks].reshape(first_chunks * chunk, -1)
    first = matrix.First(head[:, :f.d], head[:, f.d:], jnp.arange(first_chunks * chunk) < n)
    written = matrix.finalize(w, state, n, params, first)
    if f.fallback and w.can_fall_back:
        lam = matrix.ridge_lam(w, params)
        written = lax.cond(written.ok, lambda: written, lambda: matrix.eigh_fallback(written, lam))
    W = written.W
    W_low = W.astype(dtype)  # cast once, outside the loop
    low = lambda queries: queries @ W_low
    # The score loop hands each branch's recall to metrics.row_cos_dist as computed: a float32
    # recall is scored without the scaling passes that a float64 one needs (see row_cos_dist).
    if matrix.RULES[f.rule].least_squares:
        precise = matrix.is_precise(f.rule, n, f.d)
        # float64 products where K is ill conditioned: recall error ~ cond(K) * eps there.
        high = lambda queries: queries.astype(wide) @ W.astype(wide)
        recall = lambda queries: lax.cond(precise, lambda: high(queries), lambda: low(queries).astype(wide))
        scored = lambda queries, values: lax.cond(precise, lambda: metrics.row_cos_dist(high(queries), values, wide),
                                                  lambda: metrics.row_cos_dist(low(queries), values, wide))
    else:
        recall = lambda queries: low(queries).astype(wide)
        scored = lambda queries, values: metrics.row_cos_dist(low(queries), values, wide)

    # The accuracy sample: the first Q pairs, read from the cache, corrupted as the score loop
    # corrupts them (the same noise and mask draws of their chunks).
    lead = -(-Q // chunk)
    sample_valid = first.valid[:Q, None]
    sample_keys = jnp.where(sample_valid, first.keys[:Q], 0)
    true_values = jnp.where(sample_valid, first.values[:Q], 0)
    if f.noisy:
        sample_keys = sample_keys + noise_std * jax.vmap(stream.noise)(jnp.arange(lead)).reshape(-1, f.d)[:Q]
    if f.masked:
        sample_keys = sample_keys * jax.vmap(lambda j: stream.mask(j, mask))(jnp.arange(lead)).reshape(-1, f.d)[:Q]
    recalled = recall(sample_keys).astype(dtype)
    own = metrics.squared_distance_to_own(recalled, true_values)
    r2 = metrics.row_dot(recalled, recalled)
    recalled_t = recalled.T

    # Loop 2: recall and score every chunk; scan its values for each sample's nearest other.
    def score(j, carry):
        moments, nearest = carry
        keys, values, valid = only_valid(j, *second(j))
        queries = streams.queries_of(stream, j, keys, noise_std, mask, noisy=f.noisy, masked=f.masked)
        cos, dist = scored(queries, values)
        return (moments.add(cos, dist, valid.astype(wide)),
                metrics.nearest_other(nearest, recalled_t, r2, values, valid, j * chunk))

    num_chunks = (n + chunk - 1) // chunk
    moments, nearest = lax.fori_loop(0, num_chunks, score, (metrics.Moments.zero(wide), jnp.full((Q,), jnp.inf, dtype)))
    m = jnp.minimum(n, Q)
    hits = jnp.sum((jnp.arange(Q) < m) & (own < nearest))

    # Loop 3: the random baselines (or NaN: the sweep computes them once per stream).
    base = metrics.baseline(stream, wide) if f.baseline else metrics.no_baseline(wide)
    bad = ~jnp.all(jnp.isfinite(W))
    if f.keep:
        bad = bad | (n > f.kept_chunks * chunk)  # pairs beyond the cache were never kept
    out = metrics.finish(moments, hits, m, base, bad=bad, method=written.method, solved=written.ok, wide=wide)
    return out, cache


def matrix_flops(rule: str, n: int, d: int, dv: int, queries: int, passes: int = 1) -> float:
    """Analytic floating-point operations of one cell and seed (multiply-add = 2): the write
    (the rule's own count), recall 2 n d dv, nearest-neighbour scores 2 min(n, queries) n dv."""
    return float(matrix.RULES[rule].write_flops(n, d, dv, passes) + 2 * n * d * dv + 2 * min(n, queries) * n * dv)


def matrix_args(family: MatrixFamily, n, noise, lam=0.0, eta=1.0, passes=1, mask=0.0, min_norm=True):
    """The dynamic arguments of run_matrix_cell with the dtypes its compiled program expects,
    so the same program serves every cell of a family (a Python int would compile as int64
    under x64)."""
    dtype = jnp.dtype(family.dtype)
    if isinstance(n, int) and not 0 <= n < 2**31:
        raise ValueError(f"n = {n} does not fit the int32 pair counter; use n < 2^31")
    return (metrics.scalar(n, jnp.int32), metrics.scalar(noise, dtype),
            matrix.Params(metrics.scalar(lam, metrics.accumulate_dtype(dtype)), metrics.scalar(eta, dtype),
                          metrics.scalar(passes, jnp.int32), metrics.scalar(min_norm, bool)),
            metrics.scalar(mask, dtype))

