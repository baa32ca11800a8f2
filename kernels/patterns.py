"""Random key/value patterns, generated chunk by chunk from a counter-based PRNG.

Every pair i of a stream lives in chunk ``i // chunk`` and is drawn from
``fold_in(stream_key, i // chunk)``, so the first n pairs are the same whatever n is
(cells that differ only in n or in the memory share their data: paired comparisons),
and any chunk can be regenerated on demand instead of being stored. That is what keeps
memory independent of n.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DISTRIBUTIONS = ("gaussian", "sphere", "binary")

# fold_in data that no chunk index reaches: the stream of the random baseline pairs.
_BASELINE_STREAM = 0x7FFFFFFF


class Chunk(NamedTuple):
    """One chunk of pairs. keys: (c, d), values: (c, dv), noise: (c, d) standard normal,
    valid: (c,) bool, False for rows at or beyond n (padding, zeroed)."""

    keys: jax.Array
    values: jax.Array
    noise: jax.Array
    valid: jax.Array


def entry_scale(dist: str, d: int) -> float:
    """Root-mean-square of one coordinate: the unit that relative noise is measured in."""
    _check_dist(dist)
    return d**-0.5 if dist == "sphere" else 1.0


def sample(key: jax.Array, shape: tuple[int, int], dist: str, dtype) -> jax.Array:
    """Rows of i.i.d. patterns. shape: (rows, dim)."""
    return shape_patterns(jax.random.normal(key, shape, dtype), dist)


def shape_patterns(x: jax.Array, dist: str) -> jax.Array:
    """Standard normal rows -> rows of ``dist``: the normal itself, its direction (uniform on
    the unit sphere), or its signs (+-1). One normal draw serves every distribution, which
    keeps a single random-number call site per chunk (each costs compile time)."""
    _check_dist(dist)
    if dist == "binary":
        return jnp.where(x >= 0, 1, -1).astype(x.dtype)
    if dist == "sphere":
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x


def stream_key(seed, d: int, dv: int, dist: str) -> jax.Array:
    """The key of the pair stream of one (seed, d, dv, distribution).

    seed: int or traced int32 scalar. The memory kind and n are deliberately not folded
    in: every memory sees the same pairs.
    """
    _check_dist(dist)
    key = jax.random.key(seed)
    for datum in (d, dv, DISTRIBUTIONS.index(dist)):
        key = jax.random.fold_in(key, datum)
    return key


def chunk_of_pairs(key, index, n, *, chunk: int, d: int, dv: int, dist: str, dtype,
                   with_noise=False) -> Chunk:
    """Chunk number ``index`` (traced) of the stream ``key``, rows >= n zeroed.

    with_noise: False (static: no noise drawn) or a traced bool; the noise draw is skipped
    when False, since generating random numbers is a large share of a sweep's time.
    """
    k_pairs, k_noise = jax.random.split(jax.random.fold_in(key, index))
    rows = index * chunk + jnp.arange(chunk)
    valid = rows < n
    both = jax.random.normal(k_pairs, (chunk, d + dv), dtype)
    keys = jnp.where(valid[:, None], shape_patterns(both[:, :d], dist), 0)
    values = jnp.where(valid[:, None], shape_patterns(both[:, d:], dist), 0)
    if with_noise is False:
        noise = jnp.zeros((chunk, d), dtype)
    else:
        noise = jax.lax.cond(with_noise, lambda: jax.random.normal(k_noise, (chunk, d), dtype),
                             lambda: jnp.zeros((chunk, d), dtype))
    return Chunk(keys, values, noise, valid)


def baseline_pairs(key, rows: int, dim: int, dist: str, dtype) -> tuple[jax.Array, jax.Array]:
    """Two independent (rows, dim) draws of the value distribution: the random baseline."""
    x = sample(jax.random.fold_in(key, _BASELINE_STREAM), (2 * rows, dim), dist, dtype)
    return x[:rows], x[rows:]


def _check_dist(dist: str) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown pattern distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}")
