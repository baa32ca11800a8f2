"""Pair streams: the keys and values a sweep cell stores, generated chunk by chunk.

Pair i of a stream is row i of its Philox stream (kernels.philox: counter = the row and
the column group, key = the stream key), so the first n pairs are the same whatever n and
whatever the chunk size are
(cells that differ only in n or in the memory share their data: paired comparisons), and
any chunk can be regenerated on demand instead of being stored. That is what keeps memory
independent of n. Two sources: i.i.d. random patterns (Gaussian, sphere, +-1) from the
counter-based Philox generator, and rows of a table of real vectors (word embeddings).

Each random-number call site costs compile time, so a stream has few: one draw of keys and
values together, one of the query noise (noisy families only), one of the query mask
(masked families only), one of the random-baseline values.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels import philox
from kernels.names import DISTRIBUTIONS

TABLE = "table"  # the patterns of a stream whose pairs are rows of a table of real vectors (e.g. GloVe)

# Salts of the independent Philox streams of one pair stream's key (pairs: 0).
_NOISE, _MASK, _BASELINE = 1, 2, 3
# Table streams draw their random-baseline rows from here on (no pair stream gets this far).
BASELINE_CHUNKS_FROM = 2**30
# How many independent value pairs the random baselines average over.
BASELINE_PAIRS = 1024


# The most pairs per chunk. A cell's fixed work (its first chunk of pairs, the accuracy
# sample's scan of it) grows with the chunk whatever n is: 512 against the earlier 2^19-numbers
# rule (4096 pairs at d = 64, 2048 at d = 128 and 256) made a pinv family of n = 4..2^15 about
# 20-50% faster (python -m bench.profile_cell pinv D NS --chunk C; docs/performance-log.md). The
# pairs are the same whatever the chunk (Philox rows).
MAX_CHUNK = 512


def default_chunk(d: int, dv: int) -> int:
    """Pairs per chunk: about 2^19 numbers a chunk where d is large (big enough for the matmuls
    and the generator to run near their peak), at most MAX_CHUNK; a power of two in [64, 512]."""
    return int(min(MAX_CHUNK, max(64, 2 ** math.floor(math.log2(2**19 / max(d, dv))))))


def entry_scale(dist: str, d: int) -> float:
    """Root-mean-square of one coordinate: the unit that relative noise is measured in."""
    _check_dist(dist)
    return d**-0.5 if dist == "sphere" else 1.0


def shape_patterns(x: jax.Array, dist: str) -> jax.Array:
    """Standard normal rows -> rows of ``dist``: the normal itself, its direction (uniform on
    the unit sphere), or its signs (+-1). One normal draw serves every distribution."""
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
    key = jax.random.key(seed, impl="threefry2x32")  # whatever jax_default_prng_impl says: Philox takes its two words
    for datum in (d, dv, DISTRIBUTIONS.index(dist)):
        key = jax.random.fold_in(key, datum)
    return key


def draw_pairs(key, index, *, chunk: int, d: int, dv: int, dist: str, dtype):
    """Chunk ``index`` of stream ``key`` (pairs index * chunk on): keys (chunk, d) and
    values (chunk, dv), from one random-number call."""
    x = _own_array(lambda: philox.normal(key, (chunk, d + dv), dtype, row0=index * chunk), index)
    return shape_patterns(x[:, :d], dist), shape_patterns(x[:, d:], dist)


def _own_array(make: Callable[[], jax.Array], index) -> jax.Array:
    """make(), computed once into an array of its own on CPU: the branch of a conditional that
    is always taken (index >= 0; XLA cannot tell at compile time). XLA:CPU otherwise fused a
    chunk's normal transform (erf_inv's polynomial) into each consumer of the chunk, evaluating
    it three to four times (the cache store, the keys, the values), and with its older fusion
    emitters the store's fusion ran on one thread: a d = 512 pinv family (n = 4..2^15, quick
    emitters) 1.04 -> 0.69-0.76 s. Other backends compute make() as it comes (a conditional may
    cost a device-to-host read of its predicate there). Only rounding may differ from the
    fused evaluation (float32 ulps)."""
    def on_cpu():
        out = jax.eval_shape(make)
        return lax.cond(jnp.asarray(index) >= 0, make, lambda: jnp.zeros(out.shape, out.dtype))
    return lax.platform_dependent(cpu=on_cpu, default=make)


def draw_noise(key, index, *, chunk: int, d: int, dtype):
    """Standard normal query noise (chunk, d) of chunk ``index``: its own draw (its own
    Philox salt), so the pairs do not depend on the noise."""
    return philox.normal(key, (chunk, d), dtype, salt=_NOISE, row0=index * chunk)


def query_mask(key, index, fraction, *, chunk: int, d: int, dtype):
    """(chunk, d) 0/1 mask of chunk ``index`` of stream ``key`` that zeroes round(fraction * d)
    random coordinates of each row (exactly that many; fraction is traced). Its own draw, so
    the pairs and the noise do not depend on the mask."""
    z = philox.normal(key, (chunk, d), dtype, salt=_MASK, row0=index * chunk)
    rank = jnp.argsort(jnp.argsort(z, axis=1), axis=1)
    return (rank >= jnp.round(fraction * d).astype(rank.dtype)).astype(dtype)


class Stream(NamedTuple):
    """One seed's pair stream, as functions of a (traced) chunk index.

    pairs(j) -> keys (chunk, d), values (chunk, dv), every row drawn (mask rows >= n
    yourself with ``valid``); noise(j) -> standard normal (chunk, d); mask(j, fraction) ->
    0/1 (chunk, d); baseline(t) -> (chunk, dv) values independent of every pair, for the
    random baselines; scale: rms of one key coordinate, the unit of relative noise."""

    chunk: int
    d: int
    pairs: Callable
    noise: Callable
    mask: Callable
    baseline: Callable
    scale: jax.Array | float


def valid_rows(j, chunk: int, n):
    """(chunk,) bool: which rows of chunk j hold one of the first n pairs."""
    return j * chunk + jnp.arange(chunk) < n


def open_stream(seed, *, d: int, dv: int, patterns: str, chunk: int, dtype, table=None) -> Stream:
    """The pair stream of one seed. patterns: a distribution of DISTRIBUTIONS, or TABLE with
    ``table`` (V, t) real vectors: pair i is (row p[2i], row p[2i+1]) of a per-seed
    permutation p (distinct rows), projected to d (and dv) dimensions by a random
    orthonormal map when t is larger; baseline values are random rows."""
    dtype = jnp.dtype(dtype)
    if (patterns == TABLE) != (table is not None):
        raise ValueError(f"patterns {patterns!r} and table: pass a table exactly when patterns is {TABLE!r}")
    if chunk % 2:
        raise ValueError(f"chunk must be even, got {chunk}")
    if patterns == TABLE:
        return _table_stream(seed, table, d=d, dv=dv, chunk=chunk, dtype=dtype)
    key = stream_key(seed, d, dv, patterns)
    return Stream(
        chunk=chunk, d=d,
        pairs=lambda j: draw_pairs(key, j, chunk=chunk, d=d, dv=dv, dist=patterns, dtype=dtype),
        noise=lambda j: draw_noise(key, j, chunk=chunk, d=d, dtype=dtype),
        mask=lambda j, fraction: query_mask(key, j, fraction, chunk=chunk, d=d, dtype=dtype),
        baseline=lambda t: shape_patterns(
            philox.normal(key, (chunk, dv), dtype, salt=_BASELINE, row0=t * chunk), patterns),
        scale=entry_scale(patterns, d))


def _table_key(seed, d: int, dv: int):
    return jax.random.fold_in(jax.random.key(seed, impl="threefry2x32"), d * 65536 + dv)


def _table_stream(seed, table, *, d: int, dv: int, chunk: int, dtype) -> Stream:
    key = _table_key(seed, d, dv)
    rows_total, width = table.shape
    perm = jax.random.permutation(jax.random.fold_in(key, 0x7A81E), rows_total)

    def projection(salt, dim):
        if dim == width:
            return jnp.eye(width, dtype=dtype)
        q, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, salt), (width, dim), dtype))
        return q  # orthonormal columns: a random projection

    to_keys, to_values = projection(0xD1, d), projection(0xD2, dv)

    def pairs(j):
        rows = j * chunk + jnp.arange(chunk)
        keys = table[perm[(2 * rows) % rows_total]].astype(dtype) @ to_keys
        values = table[perm[(2 * rows + 1) % rows_total]].astype(dtype) @ to_values
        return keys, values

    def baseline(t):
        ids = jax.random.randint(jax.random.fold_in(key, BASELINE_CHUNKS_FROM + t), (chunk,), 0, rows_total)
        return table[ids].astype(dtype) @ to_values

    return Stream(
        chunk=chunk, d=d, pairs=pairs,
        noise=lambda j: draw_noise(key, j, chunk=chunk, d=d, dtype=dtype),
        mask=lambda j, fraction: query_mask(key, j, fraction, chunk=chunk, d=d, dtype=dtype),
        baseline=baseline,
        scale=jnp.sqrt(jnp.mean(jnp.square(table.astype(dtype)))))


def queries_of(stream: Stream, j, keys, noise_std, mask_fraction, *, noisy: bool, masked: bool):
    """The queries of chunk j: its keys plus relative Gaussian noise (noisy families), then
    round(mask * d) coordinates zeroed (masked families)."""
    queries = keys + noise_std * stream.noise(j) if noisy else keys
    if masked:
        queries = queries * stream.mask(j, mask_fraction)
    return queries


def _check_dist(dist: str) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown pattern distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}")


# The cache: the chunks of a stream as the first pass drew them, so later passes read them
# instead of drawing them again. A buffer (kept + 1, chunk, d + dv) holds keys and values side
# by side; the last slot is scratch (every store goes to slot min(j, kept), so storing needs
# no branch). One pass fills it; later passes only read it, which lets XLA update it in place.
# A sweep passes the buffer in and gets it back (donated), so it is neither allocated nor
# zeroed per cell. A family either keeps every pair it will store (later passes read, no
# random-number call site) or only the first chunks a cell needs (later passes draw again):
# a branch between reading and drawing would cost compile time in every family.


def cache_shape(family, seeds: int) -> tuple[int, int, int, int]:
    """The cache buffer of a family (matrix or attention) for ``seeds`` seeds:
    (seeds, kept_chunks + 1, chunk, d + dv)."""
    return seeds, family.kept_chunks + 1, family.chunk, family.d + family.dv


def new_cache(family, seeds: int) -> jax.Array:
    """A fresh cache buffer of ``family`` for ``seeds`` seeds."""
    return jnp.zeros(cache_shape(family, seeds), family.dtype)


def draw_and_keep(stream: Stream, cache, j, valid=None):
    """Chunk j drawn, keys and values side by side (chunk, d + dv), and the cache with it
    stored when j < kept. valid: optional (chunk,) bool; rows where it is False are zeroed
    before they are stored and returned (every pass masks them anyway)."""
    keys, values = stream.pairs(j)
    both = jnp.concatenate([keys, values], axis=1)
    if valid is not None:
        both = jnp.where(valid[:, None], both, 0)
    slot = jnp.minimum(j, cache.shape[0] - 1)
    return both, lax.dynamic_update_index_in_dim(cache, both, slot, 0)


def read_kept(stream: Stream, cache, j):
    """Keys and values of chunk j from a cache that holds it (j < kept)."""
    both = lax.dynamic_index_in_dim(cache, jnp.minimum(j, cache.shape[0] - 1), 0, keepdims=False)
    return both[:, :stream.d], both[:, stream.d:]
