"""The reductions every sweep cell shares: per-row cosine and distance, running moments,
the nearest-other-value scan of the accuracy metric, random baselines, and the final
CellMetrics with its NaN guard.

Sums run in the accumulation dtype (float64 where it exists), so rows agree to ~1e-15
whatever the batch layout (1 device or 4).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels import streams


class CellMetrics(NamedTuple):
    """Per seed (leading axis S). cos_*/dist_mean: over the scored pairs (every stored pair
    of a matrix memory, the queried ones of an attention memory); acc: nearest-neighbour
    accuracy over acc_queries queried pairs; baseline_*: over BASELINE_PAIRS independent
    random value pairs; method: index into the cell's method names; solved: the solve
    succeeded (False: rank-deficient keys, the cell needs the fallback)."""

    cos_mean: jax.Array
    cos_std: jax.Array
    dist_mean: jax.Array
    acc: jax.Array
    acc_queries: jax.Array
    baseline_cos: jax.Array
    baseline_dist: jax.Array
    method: jax.Array
    solved: jax.Array


def scalar(value, dtype) -> jax.Array | np.ndarray:
    """A knob as a scalar of ``dtype``; a value beyond its range (noise 1e200 in float32) becomes
    inf quietly, and the cell's metrics then say what it does (NaN), not a warning. A host value
    stays a NumPy scalar: a compiled program takes it as it is, and making a JAX array of it
    first dispatched a conversion per knob (6 ms per cell)."""
    if isinstance(value, jax.Array):
        return value.astype(dtype)
    with np.errstate(over="ignore"):
        return np.asarray(value).astype(np.dtype(dtype))


def accumulate_dtype(dtype) -> jnp.dtype:
    """float64 where JAX has it (x64 on), else the array dtype."""
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(dtype)


def row_dot(A, B):
    """Per-row dot products (m,) of A and B (m, k). An einsum, not sum(A * B, axis=1): XLA's
    CPU backend runs a row reduction under vmap an order of magnitude slower than a batched dot."""
    return jnp.einsum("mk,mk->m", A, B)


def row_cos_dist(R, V, wide):
    """Per-row cosine and euclidean distance between R and V (m, dv), in dtype ``wide``; a
    zero row has cosine 0. Rows are scaled by their largest entry before squaring, so recalls
    of any magnitude give the right numbers (ridge at lambda = 1e300 recalls ~1e-300, whose
    squares underflow). Rows of a narrower dtype than ``wide`` (float32 recalls, float64 sums)
    need no scaling: their squares and sums fit float64's range whatever they hold, so they are
    summed as they are (a 512 x 1024 chunk: 0.45 ms against 0.64 ms with the scaling)."""
    if _squares_fit(R.dtype, V.dtype, wide):
        R, V = R.astype(wide), V.astype(wide)
        rr, vv, rv, ee = row_dot(R, R), row_dot(V, V), row_dot(R, V), row_dot(R - V, R - V)
        norms = jnp.sqrt(rr) * jnp.sqrt(vv)
        return rv / jnp.where(norms > 0, norms, 1.0), jnp.sqrt(ee)
    R, V = R.astype(wide), V.astype(wide)
    r_scale = _row_scale(R)
    Rs = R / r_scale
    rn, vn = jnp.sqrt(row_dot(Rs, Rs)), jnp.sqrt(row_dot(V, V))
    E = R - V
    e_scale = _row_scale(E)
    Es = E / e_scale
    cos = row_dot(Rs, V) / jnp.where(rn * vn > 0, rn * vn, 1.0)
    return cos, e_scale[:, 0] * jnp.sqrt(row_dot(Es, Es))


def _squares_fit(r_dtype, v_dtype, wide) -> bool:
    """Whether rows of these dtypes can be squared and summed in ``wide`` without overflow or
    underflow: float32 and below in float64 (|x|^2 <= 1.2e77, and >= 1.4e-76 for the smallest
    normal float32: XLA flushes subnormals to zero; a row sum of up to 2^31 squares stays below
    1e87)."""
    dtypes = (jnp.dtype(r_dtype), jnp.dtype(v_dtype))
    return jnp.dtype(wide) == jnp.float64 and all(jnp.issubdtype(t, jnp.floating) and t.itemsize <= 4 for t in dtypes)


def _row_scale(X):
    """Each row's largest |entry| (m, 1), or 1 for a zero row."""
    top = jnp.max(jnp.abs(X), axis=1, keepdims=True)
    return jnp.where(top > 0, top, 1.0)


def squared_distance_to_own(R, V):
    """|R_i - V_i|^2 by the same Gram identity as ``nearest_other``, so an exact recall never
    loses a tie to rounding."""
    return row_dot(R, R) + row_dot(V, V) - 2 * row_dot(R, V)


class Moments(NamedTuple):
    """Running count, mean and sum of squared deviations of the cosine (Chan et al.'s
    pairwise update: no cancellation), and the sum of distances."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    dist_sum: jax.Array

    @classmethod
    def zero(cls, wide) -> "Moments":
        z = jnp.zeros((), wide)
        return cls(z, z, z, z)

    def add(self, cos, dist, weight) -> "Moments":
        """Fold in rows with weights 0 (padding) or 1."""
        keep = weight > 0  # padding rows never poison the sums, even when they hold inf or NaN
        cos, dist = jnp.where(keep, cos, 0), jnp.where(keep, dist, 0)
        c_count = jnp.sum(weight)
        c_mean = jnp.sum(weight * cos) / jnp.maximum(c_count, 1)
        c_m2 = jnp.sum(jnp.where(keep, weight * (cos - c_mean) ** 2, 0))
        total = self.count + c_count
        delta = c_mean - self.mean
        return Moments(total, self.mean + delta * c_count / jnp.maximum(total, 1),
                       self.m2 + c_m2 + delta**2 * self.count * c_count / jnp.maximum(total, 1),
                       self.dist_sum + jnp.sum(weight * dist))


def nearest_other(nearest, R_t, r2, values, valid, first_col):
    """Fold a chunk of stored values (c, dv) into the running squared distance (m,) from each
    recalled row to its nearest *other* stored value. R_t: the recalled rows transposed
    (dv, m), once per cell: the chunk's products are then values @ R_t, whose operands need no
    transposed copy per chunk (R @ values.T needed one: 4% of a d = 1024, n = 32768 pinv
    cell). r2: the recalled rows' squared norms. Row i is the recall of pair i; the chunk's
    rows are pairs first_col, first_col + 1, ..."""
    d2 = r2[None, :] + row_dot(values, values)[:, None] - 2 * (values @ R_t)  # (c, m)
    rows = first_col + jnp.arange(values.shape[0])
    other = valid[:, None] & (rows[:, None] != jnp.arange(R_t.shape[1])[None, :])
    return jnp.minimum(nearest, jnp.min(jnp.where(other, d2, jnp.inf), axis=0))


def baseline(stream: streams.Stream, wide):
    """Mean cosine and distance between independent random values of the stream's
    distribution: the two halves of BASELINE_PAIRS * 2 / chunk baseline chunks."""
    half = stream.chunk // 2
    steps = -(-streams.BASELINE_PAIRS // half)

    def body(t, sums):
        values = stream.baseline(t)
        cos, dist = row_cos_dist(values[:half], values[half:], wide)
        return sums[0] + jnp.sum(cos), sums[1] + jnp.sum(dist)

    zero = jnp.zeros((), wide)
    cos, dist = lax.fori_loop(0, steps, body, (zero, zero))
    return cos / (steps * half), dist / (steps * half)


def no_baseline(wide):
    """The baselines of a program that leaves them to kernels.baseline_program: NaN."""
    nan = jnp.full((), jnp.nan, wide)
    return nan, nan


def baseline_program(*, d: int, dv: int, patterns: str, chunk: int, dtype="float32"):
    """The random baselines of one pair stream (seed, d, dv, patterns) as a program of their
    own: (seeds (S,) int32[, table]) -> (cos (S,), dist (S,)), the numbers ``baseline`` gives
    inside a cell program of the same stream and chunk. They depend on nothing else (not the
    memory, not n), so a sweep computes them once per stream and seed instead of once per cell
    (each cell program then leaves them NaN: MatrixFamily.baseline)."""
    dtype = jnp.dtype(dtype)
    wide = accumulate_dtype(dtype)

    def program(seeds, table=None):
        def one(seed):
            stream = streams.open_stream(seed, d=d, dv=dv, patterns=patterns, chunk=chunk, dtype=dtype, table=table)
            return baseline(stream, wide)
        return jax.vmap(one)(seeds)

    return program


def finish(moments: Moments, hits, m, base, *, bad, method, solved, wide) -> CellMetrics:
    """The cell's metrics; every recall metric is NaN when ``bad`` (overflow, a singular solve)."""
    nan_if_bad = lambda x: jnp.where(bad, jnp.nan, x)
    count = jnp.maximum(moments.count, 1)
    return CellMetrics(
        cos_mean=nan_if_bad(moments.mean),
        cos_std=nan_if_bad(jnp.sqrt(moments.m2 / count)),
        dist_mean=nan_if_bad(moments.dist_sum / count),
        acc=nan_if_bad(hits.astype(wide) / jnp.maximum(m, 1)),
        acc_queries=m,
        baseline_cos=base[0], baseline_dist=base[1],
        method=jnp.asarray(method, jnp.int32), solved=jnp.asarray(solved, bool))
