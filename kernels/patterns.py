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

# Chunk indices from here on are the random-baseline pairs; no pair stream gets this far.
BASELINE_CHUNKS_FROM = 2**30


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


def draw_chunk(key, index, *, chunk: int, d: int, dv: int, dist: str, dtype, noisy: bool):
    """Chunk ``index`` of stream ``key``, unmasked: keys (c, d), values (c, dv), and standard
    normal query noise (c, d) when ``noisy`` (static; else zeros). Keys and values come from
    one random-number call: every call site of the generator costs compile time."""
    chunk_key = jax.random.fold_in(key, index)
    x = jax.random.normal(chunk_key, (chunk, d + dv), dtype)
    # Noise has its own draw (a second call site, in noisy families only): threefry's numbers
    # depend on the whole shape drawn, and the pairs must not depend on the noise setting.
    noise = jax.random.normal(jax.random.fold_in(chunk_key, 1), (chunk, d), dtype) if noisy else jnp.zeros((chunk, d), dtype)
    return shape_patterns(x[:, :d], dist), shape_patterns(x[:, d:d + dv], dist), noise


def query_mask(key, index, fraction, *, chunk: int, d: int, dtype):
    """(chunk, d) 0/1 mask of chunk ``index`` of stream ``key`` that zeroes round(fraction * d)
    random coordinates of each row (exactly that many; fraction is traced). Its own draw, so
    the pairs and the noise do not depend on the mask."""
    z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, index), 2), (chunk, d), dtype)
    rank = jnp.argsort(jnp.argsort(z, axis=1), axis=1)
    return (rank >= jnp.round(fraction * d).astype(rank.dtype)).astype(dtype)


def chunk_of_pairs(key, index, n, *, chunk: int, d: int, dv: int, dist: str, dtype, noisy: bool = False) -> Chunk:
    """Chunk number ``index`` (traced) of the stream ``key``, rows >= n zeroed."""
    keys, values, noise = draw_chunk(key, index, chunk=chunk, d=d, dv=dv, dist=dist, dtype=dtype, noisy=noisy)
    valid = index * chunk + jnp.arange(chunk) < n
    mask = valid[:, None]
    return Chunk(jnp.where(mask, keys, 0), jnp.where(mask, values, 0), jnp.where(mask, noise, 0), valid)


def _check_dist(dist: str) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown pattern distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}")
