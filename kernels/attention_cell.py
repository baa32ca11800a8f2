"""One sweep cell of an attention memory, batched over seeds: recall a sample of stored keys
by attention over n streamed pairs and reduce to the same metrics as a matrix-memory cell.

The stored pairs are never held: every pass over the memory regenerates them chunk by chunk
from the counter-based stream (the same pairs a matrix memory of the same d, dv and
distribution sees), so memory is O(queries x (d + chunk)) whatever n is, and one compiled
program serves every n, beta, degree, noise level and mask fraction of a family.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels import attention, matrix, patterns
from kernels.cell import BASELINE_PAIRS, CellMetrics, baseline_sums, pair_source, row_cos_dist


class AttentionShape(NamedTuple):
    """Static settings of a compiled family of attention cells.

    queries: how many stored keys are recalled (the first min(n, queries) pairs: pairs are
    i.i.d., so they are a uniform random sample). k: top-k width. steps > 1: auto-association
    (values are the keys themselves; each output is the next query). noisy / masked: whether
    queries get Gaussian noise / zeroed coordinates (the amounts are traced)."""

    similarity: str
    separation: str
    d: int
    dv: int
    dist: str
    dtype: str = "float32"
    chunk: int = 256
    queries: int = 1024
    k: int = 1
    heads: int = 1
    steps: int = 1
    noisy: bool = False
    masked: bool = False


class AttentionKnobs(NamedTuple):
    """Traced knobs: inverse temperature, polynomial degree, fraction of query coordinates zeroed."""

    beta: jax.Array
    degree: jax.Array
    mask: jax.Array


def attention_args(shape: AttentionShape, n, noise=0.0, beta=1.0, degree=3.0, mask=0.0):
    """Dynamic arguments of run_attention_cell with the dtypes its compiled program expects."""
    dtype = jnp.dtype(shape.dtype)
    return (jnp.asarray(n, jnp.int32), jnp.asarray(noise, dtype),
            AttentionKnobs(jnp.asarray(beta, dtype), jnp.asarray(degree, dtype), jnp.asarray(mask, dtype)))


def run_attention_cell(shape: AttentionShape, seeds, n, noise, knobs: AttentionKnobs, table=None) -> CellMetrics:
    """seeds: (S,) int32; n: int scalar (traced); noise: relative query noise; knobs: traced.
    Metrics (per seed) are over the recalled sample: cosine and distance to the true value,
    nearest-neighbour accuracy against all n stored values, random baselines as for
    kernels.run_cell. ``method`` is 0 and ``solved`` True (no solve)."""
    attention.check_settings(shape.similarity, shape.separation, d=shape.d, dv=shape.dv, heads=shape.heads,
                             steps=shape.steps, k=shape.k)
    if shape.chunk % 2:
        raise ValueError(f"chunk must be even, got {shape.chunk}")
    return jax.vmap(lambda seed: _run_seed(shape, seed, n, noise, knobs, table))(seeds)


def _run_seed(shape: AttentionShape, seed, n, noise, knobs: AttentionKnobs, table) -> CellMetrics:
    dtype = jnp.dtype(shape.dtype)
    acc_dtype = matrix.accumulate_dtype(dtype)
    n = jnp.asarray(n, jnp.int32)
    chunk, Q, h, sim, sep = shape.chunk, shape.queries, shape.heads, shape.similarity, shape.separation
    key, draw, scale = pair_source(shape, seed, table)
    auto = shape.steps > 1
    noise_std = jnp.asarray(noise, dtype) * scale
    beta, degree = knobs.beta.astype(dtype), knobs.degree.astype(dtype)

    m = jnp.minimum(n, Q)
    lead = (m + chunk - 1) // chunk
    lead_max = -(-Q // chunk)
    num_chunks = (n + chunk - 1) // chunk
    base_steps = -(-BASELINE_PAIRS // (chunk // 2))

    def pairs(j, noisy):
        keys, values, eps = draw(j, noisy)
        values = keys if auto else values
        valid = j * chunk + jnp.arange(chunk) < n
        return jnp.where(valid[:, None], keys, 0), jnp.where(valid[:, None], values, 0), eps, valid

    # Loop 1: the query sample (first m pairs, corrupted), then the random-baseline pairs.
    def sample_body(t, carry):
        qbuf, vbuf, base_cos, base_dist = carry
        is_base = t >= lead
        index = jnp.where(is_base, patterns.BASELINE_CHUNKS_FROM + t - lead, t)
        keys, values, eps = draw(index, shape.noisy)
        values = keys if auto else values
        valid = ~is_base & (t * chunk + jnp.arange(chunk) < n)
        queries = keys + noise_std * eps
        if shape.masked:
            queries = queries * patterns.query_mask(key, index, knobs.mask, chunk=chunk, d=shape.d, dtype=dtype)
        queries = jnp.where(valid[:, None], queries, 0)
        at = jnp.minimum(t, lead_max - 1) * chunk
        qbuf = jnp.where(is_base, qbuf, lax.dynamic_update_slice_in_dim(qbuf, queries, at, 0))
        vbuf = jnp.where(is_base, vbuf, lax.dynamic_update_slice_in_dim(vbuf, jnp.where(valid[:, None], values, 0), at, 0))
        cos, dist = baseline_sums(values, acc_dtype)
        return (qbuf, vbuf, base_cos + jnp.where(is_base, cos, 0), base_dist + jnp.where(is_base, dist, 0))

    zero = jnp.zeros((), acc_dtype)
    qbuf, vbuf, base_cos, base_dist = lax.fori_loop(
        0, lead + base_steps, sample_body,
        (jnp.zeros((lead_max * chunk, shape.d), dtype), jnp.zeros((lead_max * chunk, shape.dv), dtype), zero, zero))
    queries, true_values = qbuf[:Q], vbuf[:Q]

    # Loops 2..steps+1: one attention pass over the whole memory per update.
    for _ in range(shape.steps):
        qh = attention.prepare(attention.split_heads(queries, h), sim)

        def attend_body(j, state, qh=qh):
            keys, values, _, valid = pairs(j, False)
            kh = attention.prepare(attention.split_heads(keys, h), sim)
            return attention.online_update(sep, state, attention.block_scores(qh, kh, sim),
                                           attention.split_heads(values, h), valid, beta, degree)

        state = lax.fori_loop(0, num_chunks, attend_body,
                              attention.online_init(sep, h, Q, shape.dv // h, shape.k, dtype))
        queries = attention.merge_heads(attention.online_result(sep, state, beta))
    recalled = queries

    # Last loop: the nearest other stored value of each recalled one.
    r2 = jnp.sum(recalled * recalled, axis=1)
    rows = jnp.arange(Q)

    def nearest_body(j, nearest):
        _, values, _, valid = pairs(j, False)
        d2 = r2[:, None] + jnp.sum(values**2, axis=1)[None, :] - 2 * (recalled @ values.T)
        cols = j * chunk + jnp.arange(chunk)
        other = valid[None, :] & (cols[None, :] != rows[:, None])
        return jnp.minimum(nearest, jnp.min(jnp.where(other, d2, jnp.inf), axis=1))

    nearest = lax.fori_loop(0, num_chunks, nearest_body, jnp.full((Q,), jnp.inf, dtype))
    # The same formula as for the others, so exact recall never loses a tie to rounding.
    own = r2 + jnp.sum(true_values**2, axis=1) - 2 * jnp.sum(recalled * true_values, axis=1)

    in_sample = rows < m
    cos, dist = row_cos_dist(recalled, true_values, acc_dtype)
    count = m.astype(acc_dtype)
    mean = jnp.sum(jnp.where(in_sample, cos, 0)) / count
    spread = jnp.sqrt(jnp.sum(jnp.where(in_sample, (cos - mean) ** 2, 0)) / count)
    bad = ~jnp.all(jnp.where(in_sample[:, None], jnp.isfinite(recalled), True))
    nan_if_bad = lambda x: jnp.where(bad, jnp.nan, x)
    hits = jnp.sum(in_sample & (own < nearest))
    base_pairs = base_steps * (chunk // 2)
    return CellMetrics(
        cos_mean=nan_if_bad(mean), cos_std=nan_if_bad(spread),
        dist_mean=nan_if_bad(jnp.sum(jnp.where(in_sample, dist, 0)) / count),
        acc=nan_if_bad(hits.astype(acc_dtype) / count), acc_queries=m,
        baseline_cos=base_cos / base_pairs, baseline_dist=base_dist / base_pairs,
        method=jnp.zeros((), jnp.int32), solved=jnp.ones((), bool))


def attention_flops(n: int, d: int, dv: int, queries: int, steps: int = 1) -> float:
    """Analytic floating-point operations of one cell and seed (multiply-add = 2; a distance
    counts as a dot product): per update, scores 2 m n d and the blend 2 m n dv; then the
    nearest-neighbour scan 2 m n dv, for m = min(n, queries) recalled keys."""
    m = min(n, queries)
    return float(steps * (2 * m * n * d + 2 * m * n * dv) + 2 * m * n * dv)
