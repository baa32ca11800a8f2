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
    fallback: bool = False


class CellMetrics(NamedTuple):
    """Per seed (leading axis S). cos_*/dist_mean: over all n stored pairs; acc: over
    acc_queries sampled pairs; baseline_*: over BASELINE_PAIRS independent random pairs;
    method: index into kernels.matrix.METHOD_NAMES."""

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


def run_cell(shape: CellShape, seeds, n, noise, params: matrix.Params) -> CellMetrics:
    """seeds: (S,) int32; n: int scalar; noise: relative query noise (std of the added
    Gaussian in units of a key coordinate's rms); params: traced knobs. Pure and jittable."""
    dtype = jnp.dtype(shape.dtype)
    n = jnp.asarray(n, jnp.int32)
    noise = jnp.asarray(noise, dtype)

    def source_for(key, with_noise):
        def source(j):
            return patterns.chunk_of_pairs(key, j, n, chunk=shape.chunk, d=shape.d, dv=shape.dv,
                                           dist=shape.dist, dtype=dtype, with_noise=with_noise)
        return source

    def write_one(seed):
        source = source_for(patterns.stream_key(seed, shape.d, shape.dv, shape.dist), False)

        def pairs(j):
            c = source(j)
            return c.keys, c.values, c.valid

        return matrix.write(shape.rule, pairs, n, params,
                            d=shape.d, dv=shape.dv, chunk=shape.chunk, dtype=dtype, method=shape.method)

    written = jax.vmap(write_one)(seeds)
    if shape.fallback and shape.rule in ("pinv", "ridge") and shape.method == "gram64":
        # Decided once for the whole batch, so the (rare, costly) eigendecomposition runs only
        # when some seed's keys are rank deficient, and only those seeds take its answer.
        def fall_back(w):
            alt = jax.vmap(lambda x: matrix.eigh_fallback(x, n, dtype))(w)
            keep = lambda a, b: jnp.where(w.ok.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
            return jax.tree.map(keep, w, alt)

        written = lax.cond(jnp.all(written.ok), lambda w: w, fall_back, written)

    precise = matrix.is_precise(shape.rule, n, shape.d)

    def metrics_one(seed, W, method, ok):
        key = patterns.stream_key(seed, shape.d, shape.dv, shape.dist)
        source = source_for(key, noise > 0)
        noise_std = noise * patterns.entry_scale(shape.dist, shape.d)
        return _metrics(shape, key, source, W, n, noise_std, precise, method, ok)

    return jax.vmap(metrics_one)(seeds, written.W, written.method, written.ok)


def _recall_rows(Q, V, W, precise, acc):
    """Per-row cosine and distance between Q W and V, in float64 where K is ill conditioned."""

    def rows(dt):
        R = Q.astype(dt) @ W.astype(dt)
        Vd = V.astype(dt)
        rn, vn = jnp.linalg.norm(R, axis=1), jnp.linalg.norm(Vd, axis=1)
        cos = jnp.sum(R * Vd, axis=1) / jnp.where(rn * vn > 0, rn * vn, 1.0)
        return cos.astype(acc), jnp.linalg.norm(R - Vd, axis=1).astype(acc)

    return lax.cond(precise, lambda: rows(acc), lambda: rows(Q.dtype))


def _metrics(shape, key, source, W, n, noise_std, precise, method, ok) -> CellMetrics:
    dtype = jnp.dtype(shape.dtype)
    acc = matrix.accumulate_dtype(dtype)
    chunk, sample = shape.chunk, shape.sample
    lead = -(-sample // chunk)  # chunks that hold the accuracy sample
    m = jnp.minimum(n, sample)
    in_sample = jnp.arange(sample) < m

    # One loop, one random-number call site: steps 0..lead-1 recall the accuracy sample (the
    # first min(n, sample) pairs), then every chunk is recalled, scored and compared with it.
    def body(t, carry):
        recalled, own, count, mean, m2, dist_sum, nearest_other = carry
        j = jnp.where(t < lead, t, t - lead)
        c = source(j)
        queries = c.keys + noise_std * c.noise

        def keep_sample():
            R = queries @ W.astype(dtype)
            # The same formula as for the others, so exact recall never loses a tie to rounding.
            d2 = jnp.sum(R * R, axis=1) + jnp.sum(c.values**2, axis=1) - 2 * jnp.sum(R * c.values, axis=1)
            return (lax.dynamic_update_index_in_dim(recalled, R, t, 0),
                    lax.dynamic_update_index_in_dim(own, d2, t, 0), count, mean, m2, dist_sum, nearest_other)

        def score_chunk():
            cos, dist = _recall_rows(queries, c.values, W, precise, acc)
            weight = c.valid.astype(acc)
            # Chan et al.'s pairwise update: mean and spread without cancellation.
            c_count = jnp.sum(weight)
            c_mean = jnp.sum(weight * cos) / jnp.maximum(c_count, 1)
            c_m2 = jnp.sum(weight * (cos - c_mean) ** 2)
            total = count + c_count
            delta = c_mean - mean
            new_mean = mean + delta * c_count / jnp.maximum(total, 1)
            new_m2 = m2 + c_m2 + delta**2 * count * c_count / jnp.maximum(total, 1)
            # Nearest other stored value of each sampled recall.
            Rs = recalled.reshape(-1, recalled.shape[-1])[:sample]
            d2 = jnp.sum(Rs * Rs, axis=1)[:, None] + jnp.sum(c.values**2, axis=1)[None, :] - 2 * (Rs @ c.values.T)
            cols = j * chunk + jnp.arange(chunk)
            other = c.valid[None, :] & (cols[None, :] != jnp.arange(sample)[:, None])
            nearest = jnp.minimum(nearest_other, jnp.min(jnp.where(other, d2, jnp.inf), axis=1))
            return recalled, own, total, new_mean, new_m2, dist_sum + jnp.sum(weight * dist), nearest

        return lax.cond(t < lead, keep_sample, score_chunk)

    zero = jnp.zeros((), acc)
    init = (jnp.zeros((lead, chunk, W.shape[1]), dtype), jnp.zeros((lead, chunk), dtype), zero, zero, zero,
            zero, jnp.full((sample,), jnp.inf, dtype))
    steps = lead + (n + chunk - 1) // chunk
    recalled, own, count, mean, m2, dist_sum, nearest_other = lax.fori_loop(0, steps, body, init)
    own = own.reshape(-1)[:sample]
    hits = jnp.sum(in_sample & (own < nearest_other))

    bx, by = patterns.baseline_pairs(key, BASELINE_PAIRS, shape.dv, shape.dist, dtype)
    # In the accumulation dtype: the mean cosine is ~0 by cancellation of O(1) terms, so float32
    # rounding would be most of its value (and would differ with the batch layout).
    bx, by = bx.astype(acc), by.astype(acc)
    b_norms = jnp.linalg.norm(bx, axis=1) * jnp.linalg.norm(by, axis=1)
    baseline_cos = jnp.mean(jnp.sum(bx * by, axis=1) / jnp.where(b_norms > 0, b_norms, 1.0))
    baseline_dist = jnp.mean(jnp.linalg.norm(bx - by, axis=1))
    bad = ~jnp.all(jnp.isfinite(W))
    nan_if_bad = lambda x: jnp.where(bad, jnp.nan, x)
    return CellMetrics(
        cos_mean=nan_if_bad(mean),
        cos_std=nan_if_bad(jnp.sqrt(m2 / jnp.maximum(count, 1))),
        dist_mean=nan_if_bad(dist_sum / jnp.maximum(count, 1)),
        acc=nan_if_bad(hits.astype(acc) / m),
        acc_queries=m,
        baseline_cos=baseline_cos.astype(acc),
        baseline_dist=baseline_dist.astype(acc),
        method=method,
        solved=ok,
    )


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


def cell_args(shape: CellShape, n, noise, lam=0.0, eta=1.0, passes=1):
    """The dynamic arguments of run_cell with the dtypes its compiled program expects, so the
    same program serves every cell of a family (a Python int would compile as int64 under x64)."""
    dtype = jnp.dtype(shape.dtype)
    return (jnp.asarray(n, jnp.int32), jnp.asarray(noise, dtype),
            matrix.Params(jnp.asarray(lam, dtype), jnp.asarray(eta, dtype), jnp.asarray(passes, jnp.int32)))
