"""One sweep cell of a matrix memory, batched over seeds: write n streamed pairs, recall
every stored value from its (optionally noisy) key, and reduce to metrics, with memory
independent of n and one compiled program for every n, noise and knob value.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels import matrix, patterns

BASELINE_PAIRS = 1024


class CellShape(NamedTuple):
    """Static settings of a compiled family of cells (everything but n, noise, knobs).

    sample: the most queries scored for nearest-neighbour accuracy (the first
    min(n, sample) pairs: pairs are i.i.d., so they are a uniform random sample).
    noisy / masked: whether queries get noise / zeroed coordinates (the amounts are traced).
    fallback: include the eigenvalue pseudoinverse for rank-deficient keys. It costs compile
    time, so a sweep compiles it only for a cell whose ``solved`` came back False."""

    rule: str
    d: int
    dv: int
    dist: str
    dtype: str = "float32"
    chunk: int = 256
    sample: int = 1024
    method: str = "gram64"
    noisy: bool = False
    masked: bool = False
    fallback: bool = False


class CellMetrics(NamedTuple):
    """Per seed (leading axis S). cos_*/dist_mean: over all n stored pairs; acc: over
    acc_queries sampled pairs; baseline_*: over BASELINE_PAIRS independent random pairs;
    method: index into kernels.matrix.METHOD_NAMES; solved: the solve succeeded (False: the
    keys are rank deficient and the cell needs the fallback)."""

    cos_mean: jax.Array
    cos_std: jax.Array
    dist_mean: jax.Array
    acc: jax.Array
    acc_queries: jax.Array
    baseline_cos: jax.Array
    baseline_dist: jax.Array
    method: jax.Array
    solved: jax.Array


def default_chunk(d: int, dv: int) -> int:
    """Pairs per chunk: about 2^18 numbers a chunk, a power of two in [64, 4096]."""
    return int(min(4096, max(64, 2 ** math.floor(math.log2(2**18 / max(d, dv))))))


class _Stats(NamedTuple):
    recalled: jax.Array       # (lead, chunk, dv) recalls of the accuracy sample
    own: jax.Array            # (lead, chunk) squared distance to the own value
    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    dist_sum: jax.Array
    nearest_other: jax.Array  # (sample,) squared distance to the nearest other value
    base_cos: jax.Array
    base_dist: jax.Array


TABLE = "table"  # CellShape.dist for pairs drawn from a table of real vectors (e.g. word embeddings)


def run_cell(shape: CellShape, seeds, n, noise, params: matrix.Params, mask=0.0, table=None) -> CellMetrics:
    """seeds: (S,) int32; n: int scalar; noise: relative query noise (std of the added
    Gaussian in units of a key coordinate's rms); params: traced knobs; mask: fraction of each
    query's coordinates zeroed (after the noise; read when shape.masked). Pure and jittable.

    Two loops per seed, each with one random-number call site: the write, then the recall of
    the accuracy sample (the first min(n, sample) pairs), of every chunk, and of the
    random-baseline pairs.

    table: (V, t) real vectors when shape.dist is "table": pair i is (row p[2i], row p[2i+1])
    of a per-seed permutation p (distinct words), projected to d (and dv) dimensions by a random
    orthonormal map when t is larger; random baseline pairs are random rows."""
    if shape.chunk % 2:
        raise ValueError(f"chunk must be even, got {shape.chunk}")
    if (shape.dist == TABLE) != (table is not None):
        raise ValueError(f"dist {shape.dist!r} and table: pass a table exactly when dist is {TABLE!r}")
    return jax.vmap(lambda seed: _run_seed(shape, seed, n, noise, params, mask, table))(seeds)


def _table_draw(shape: CellShape, key, table, dtype):
    """draw(index, noisy) for pairs taken from the rows of ``table`` (see run_cell)."""
    rows_total, width = table.shape
    perm = jax.random.permutation(jax.random.fold_in(key, 0x7A81E), rows_total)

    def projection(salt, dim):
        if dim == width:
            return jnp.eye(width, dtype=dtype)
        q, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, salt), (width, dim), dtype))
        return q  # orthonormal columns: a random projection that keeps norms on average * sqrt(dim/width)

    to_keys, to_values = projection(0xD1, shape.d), projection(0xD2, shape.dv)

    def draw(index, noisy):
        chunk_key = jax.random.fold_in(key, index)
        rows = index * shape.chunk + jnp.arange(shape.chunk)
        random_ids = jax.random.randint(chunk_key, (2, shape.chunk), 0, rows_total)
        baseline = index >= patterns.BASELINE_CHUNKS_FROM
        key_ids = jnp.where(baseline, random_ids[0], perm[(2 * rows) % rows_total])
        value_ids = jnp.where(baseline, random_ids[1], perm[(2 * rows + 1) % rows_total])
        keys = table[key_ids].astype(dtype) @ to_keys
        values = table[value_ids].astype(dtype) @ to_values
        noise = (jax.random.normal(jax.random.fold_in(chunk_key, 1), (shape.chunk, shape.d), dtype) if noisy
                 else jnp.zeros((shape.chunk, shape.d), dtype))
        return keys, values, noise

    return draw


def pair_source(shape, seed, table=None):
    """(key, draw, scale) of one seed's pair stream. shape: any settings with d, dv, dist, chunk
    and dtype. draw(index, noisy) -> keys (chunk, d), values (chunk, dv), standard normal noise
    (chunk, d) of chunk ``index``, drawn from fold_in(key, index); scale: the rms of one key
    coordinate, the unit of relative noise."""
    dtype = jnp.dtype(shape.dtype)
    if shape.dist == TABLE:
        key = jax.random.fold_in(jax.random.key(seed), shape.d * 65536 + shape.dv)
        return key, _table_draw(shape, key, table, dtype), jnp.sqrt(jnp.mean(jnp.square(table.astype(dtype))))
    key = patterns.stream_key(seed, shape.d, shape.dv, shape.dist)

    def draw(index, noisy):
        return patterns.draw_chunk(key, index, chunk=shape.chunk, d=shape.d, dv=shape.dv, dist=shape.dist,
                                   dtype=dtype, noisy=noisy)

    return key, draw, patterns.entry_scale(shape.dist, shape.d)


def _run_seed(shape: CellShape, seed, n, noise, params, mask, table) -> CellMetrics:
    dtype = jnp.dtype(shape.dtype)
    acc = matrix.accumulate_dtype(dtype)
    n = jnp.asarray(n, jnp.int32)
    chunk, sample, dv = shape.chunk, shape.sample, shape.dv
    key, draw, scale = pair_source(shape, seed, table)
    noise_std = jnp.asarray(noise, dtype) * scale
    precise = matrix.is_precise(shape.rule, n, shape.d)

    num_chunks = (n + chunk - 1) // chunk
    lead_max = -(-sample // chunk)
    m = jnp.minimum(n, sample)
    lead = (m + chunk - 1) // chunk
    base_steps = -(-BASELINE_PAIRS // (chunk // 2))

    def pairs(j):
        keys, values, _ = draw(j, False)
        valid = j * chunk + jnp.arange(chunk) < n
        return jnp.where(valid[:, None], keys, 0), jnp.where(valid[:, None], values, 0), valid

    # The write is its own loop: carrying the Gram matrix through the recall loop's branches
    # would copy it at every step.
    written = matrix.write(shape.rule, pairs, n, params, d=shape.d, dv=dv, chunk=chunk, dtype=dtype,
                           method=shape.method)
    if shape.fallback and matrix.Writer(shape.rule, shape.d, dv, chunk, dtype, shape.method).can_fall_back:
        written = lax.cond(written.ok, lambda: written, lambda: matrix.eigh_fallback(written))

    zero = jnp.zeros((), acc)
    stats0 = _Stats(jnp.zeros((lead_max, chunk, dv), dtype), jnp.zeros((lead_max, chunk), dtype), zero, zero, zero,
                    zero, jnp.full((sample,), jnp.inf, dtype), zero, zero)
    ends = jnp.cumsum(jnp.stack([lead, num_chunks]))
    W = written.W
    W_low = W.astype(dtype)  # cast once, outside the loop

    # One loop, one random-number call site: recall the accuracy sample, then recall and score
    # every chunk against it, then draw the random-baseline pairs.
    def body(t, stats):
        phase = jnp.sum(t >= ends)
        local = t - jnp.concatenate([jnp.zeros(1, ends.dtype), ends])[phase]
        j = local
        index = jnp.where(phase == 2, patterns.BASELINE_CHUNKS_FROM + local, j)
        keys, values, eps = draw(index, shape.noisy)
        valid = (phase == 2) | (jnp.where(phase == 2, 0, j) * chunk + jnp.arange(chunk) < n)
        keys, values, eps = (jnp.where(valid[:, None], x, 0) for x in (keys, values, eps))
        queries = keys + noise_std * eps
        if shape.masked:
            queries = queries * patterns.query_mask(key, index, jnp.asarray(mask, dtype), chunk=chunk, d=shape.d,
                                                    dtype=dtype)

        def sample_step():
            R = queries @ W_low
            # The same formula as for the others, so exact recall never loses a tie to rounding.
            d2 = jnp.sum(R * R, axis=1) + jnp.sum(values**2, axis=1) - 2 * jnp.sum(R * values, axis=1)
            return stats._replace(recalled=lax.dynamic_update_index_in_dim(stats.recalled, R, local, 0),
                                  own=lax.dynamic_update_index_in_dim(stats.own, d2, local, 0))

        def score_step():
            cos, dist = _recall_rows(queries, values, W, W_low, precise, acc)
            weight = valid.astype(acc)
            # Chan et al.'s pairwise update: mean and spread without cancellation.
            c_count = jnp.sum(weight)
            c_mean = jnp.sum(weight * cos) / jnp.maximum(c_count, 1)
            c_m2 = jnp.sum(weight * (cos - c_mean) ** 2)
            total = stats.count + c_count
            delta = c_mean - stats.mean
            Rs = stats.recalled.reshape(-1, dv)[:sample]
            d2 = jnp.sum(Rs * Rs, axis=1)[:, None] + jnp.sum(values**2, axis=1)[None, :] - 2 * (Rs @ values.T)
            cols = j * chunk + jnp.arange(chunk)
            other = valid[None, :] & (cols[None, :] != jnp.arange(sample)[:, None])
            return stats._replace(
                count=total,
                mean=stats.mean + delta * c_count / jnp.maximum(total, 1),
                m2=stats.m2 + c_m2 + delta**2 * stats.count * c_count / jnp.maximum(total, 1),
                dist_sum=stats.dist_sum + jnp.sum(weight * dist),
                nearest_other=jnp.minimum(stats.nearest_other, jnp.min(jnp.where(other, d2, jnp.inf), axis=1)))

        def baseline_step():
            cos, dist = baseline_sums(values, acc)
            return stats._replace(base_cos=stats.base_cos + cos, base_dist=stats.base_dist + dist)

        return lax.switch(phase, [sample_step, score_step, baseline_step])

    st = lax.fori_loop(0, ends[-1] + base_steps, body, stats0)
    own = st.own.reshape(-1)[:sample]
    hits = jnp.sum((jnp.arange(sample) < m) & (own < st.nearest_other))
    base_pairs = base_steps * (chunk // 2)
    bad = ~jnp.all(jnp.isfinite(W))
    nan_if_bad = lambda x: jnp.where(bad, jnp.nan, x)
    return CellMetrics(
        cos_mean=nan_if_bad(st.mean),
        cos_std=nan_if_bad(jnp.sqrt(st.m2 / jnp.maximum(st.count, 1))),
        dist_mean=nan_if_bad(st.dist_sum / jnp.maximum(st.count, 1)),
        acc=nan_if_bad(hits.astype(acc) / m),
        acc_queries=m,
        baseline_cos=st.base_cos / base_pairs,
        baseline_dist=st.base_dist / base_pairs,
        method=written.method,
        solved=written.ok,
    )


def row_cos_dist(R, V, acc):
    """Per-row cosine and euclidean distance between R and V (m, dv), reduced in the
    accumulation dtype ``acc`` (so that rows agree to ~1e-15 whatever the batch layout, 1
    device or 4); a zero row has cosine 0."""
    R, V = R.astype(acc), V.astype(acc)
    rn, vn = jnp.linalg.norm(R, axis=1), jnp.linalg.norm(V, axis=1)
    return jnp.sum(R * V, axis=1) / jnp.where(rn * vn > 0, rn * vn, 1.0), jnp.linalg.norm(R - V, axis=1)


def baseline_sums(values, acc):
    """Sums of the cosine and the distance between the two halves of a chunk of values:
    independent random vectors of the value distribution. In the accumulation dtype: the mean
    cosine is ~0 by cancellation of O(1) terms."""
    half = values.shape[0] // 2
    cos, dist = row_cos_dist(values[:half], values[half:], acc)
    return jnp.sum(cos), jnp.sum(dist)


def _recall_rows(Q, V, W, W_low, precise, acc):
    """Per-row cosine and distance between Q W and V: the product in float64 where K is ill
    conditioned."""
    return lax.cond(precise, lambda: row_cos_dist(Q.astype(acc) @ W.astype(acc), V, acc),
                    lambda: row_cos_dist(Q @ W_low, V, acc))


def flops(rule: str, n: int, d: int, dv: int, sample: int, passes: int = 1) -> float:
    """Analytic floating-point operations of one cell and seed (multiply-add = 2).

    Write: Gram K^T K (2nd^2, not for hebbian/delta), cross K^T V (2nd dv); the delta rule
    costs ~ 4 n d dv + 2 n b (d + dv) per pass with blocks of b pairs; solves ~ d^3/3 + 2d^2 dv.
    Recall 2 n d dv; nearest-neighbour scores 2 min(n, sample) n dv.
    """
    if rule == "delta":
        b = matrix.DELTA_BLOCK
        write = passes * (4 * n * d * dv + 2 * n * b * (d + dv))
    elif rule == "hebbian":
        write = 2 * n * d * dv
    else:
        solve = (n**3 / 3 + 2 * n**2 * d + 2 * n * d * dv) if (rule == "pinv" and n < d) else (d**3 / 3 + 2 * d**2 * dv)
        write = 2 * n * d * d + 2 * n * d * dv + solve
    return float(write + 2 * n * d * dv + 2 * min(n, sample) * n * dv)


def cell_args(shape: CellShape, n, noise, lam=0.0, eta=1.0, passes=1, mask=0.0):
    """The dynamic arguments of run_cell with the dtypes its compiled program expects, so the
    same program serves every cell of a family (a Python int would compile as int64 under x64)."""
    dtype = jnp.dtype(shape.dtype)
    return (jnp.asarray(n, jnp.int32), jnp.asarray(noise, dtype),
            matrix.Params(jnp.asarray(lam, dtype), jnp.asarray(eta, dtype), jnp.asarray(passes, jnp.int32)),
            jnp.asarray(mask, dtype))
