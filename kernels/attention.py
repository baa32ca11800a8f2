"""Attention recall: a query is scored against every stored key, the scores are turned into
weights, and the answer is the weighted blend of the stored values.

Shapes, one item per row: queries (q, d), keys (n, d), values (n, dv) -> (q, dv).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

SIMILARITIES = ("dot", "scaled_dot", "cosine")


class Attended(NamedTuple):
    """outputs: (q, dv) blended values; weights: (q, n) attention weights (rows sum to 1)."""

    outputs: jax.Array
    weights: jax.Array


def similarity(queries, keys, kind: str):
    """Scores (q, n): dot products, dot / sqrt(d) (as in transformers), or cosines."""
    if kind == "dot":
        return queries @ keys.T
    if kind == "scaled_dot":
        return queries @ keys.T / jnp.sqrt(jnp.asarray(queries.shape[-1], queries.dtype))
    if kind == "cosine":
        unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), jnp.finfo(x.dtype).tiny)
        return unit(queries) @ unit(keys).T
    raise ValueError(f"unknown similarity {kind!r}; use one of {', '.join(SIMILARITIES)}")


@partial(jax.jit, static_argnames="kind")
def softmax_attend(queries, keys, values, beta=1.0, *, kind: str = "dot") -> Attended:
    """weights = softmax(beta * similarity(q, K)) over the stored keys; outputs = weights V."""
    weights = jax.nn.softmax(beta * similarity(queries, keys, kind), axis=-1)
    return Attended(weights @ values, weights)


SEPARATIONS = ("softmax", "topk", "max", "polynomial", "identity")
ALL_SIMILARITIES = SIMILARITIES + ("euclidean", "manhattan")


def _scores(q, k, kind):
    """Scores (bq, bk) of a query block against a key block, for every similarity."""
    if kind == "euclidean":
        return -jnp.sqrt(jnp.maximum(jnp.sum(q * q, 1)[:, None] + jnp.sum(k * k, 1)[None, :] - 2 * q @ k.T, 0.0))
    if kind == "manhattan":
        return -jnp.sum(jnp.abs(q[:, None, :] - k[None, :, :]), axis=-1)
    return similarity(q, k, kind)


@partial(jax.jit, static_argnames=("similarity", "separation", "k", "heads", "block_size", "steps", "power"))
def recall(queries, keys, values, *, similarity: str = "dot", separation: str = "softmax", beta=1.0, k: int = 1,
           heads: int = 1, block_size: int = 256, steps: int = 1, power: int = 3):
    """Attention recall sep(sim(q, K)) V, blockwise: keys are visited ``block_size`` at a time
    with running (online) statistics, so the (q, n) score matrix is never materialised.

    queries (q, d), keys (n, d), values (n, dv) -> (q, dv). separation: softmax (inverse
    temperature beta), topk (softmax over the k best scores), max (the best key's value),
    polynomial (relu(score)^power, normalised), identity (raw scores: linear attention).
    heads: split d and dv into that many heads and concatenate. steps: apply the update that
    many times, the output becoming the next query (auto-association; needs dv == d).
    """
    if similarity not in ALL_SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(ALL_SIMILARITIES)}")
    if separation not in SEPARATIONS:
        raise ValueError(f"unknown separation {separation!r}; use one of {', '.join(SEPARATIONS)}")
    n, d = keys.shape
    dv = values.shape[1]
    if d % heads or dv % heads:
        raise ValueError(f"heads = {heads} must divide d = {d} and dv = {dv}")
    if steps > 1 and dv != d:
        raise ValueError(f"steps = {steps} feeds outputs back as queries, which needs dv == d (got {dv} and {d})")
    if separation == "topk" and not 1 <= k <= n:
        raise ValueError(f"k = {k} must be between 1 and the number of stored pairs {n}")
    dtype = jnp.result_type(queries.dtype, keys.dtype, values.dtype, jnp.float32)
    blk = max(1, min(block_size, n))
    rows = -(-n // blk) * blk
    kp = jnp.pad(keys.astype(dtype), ((0, rows - n), (0, 0)))
    vp = jnp.pad(values.astype(dtype), ((0, rows - n), (0, 0)))
    valid = jnp.arange(rows) < n

    def one_head(q, kh, vh):
        kb, vb, mb = kh.reshape(-1, blk, kh.shape[1]), vh.reshape(-1, blk, vh.shape[1]), valid.reshape(-1, blk)
        return _blockwise(q, kb, vb, mb, similarity, separation, jnp.asarray(beta, dtype), k, power)

    def update(q):
        qs = jnp.split(q, heads, axis=1)
        ks, vs = jnp.split(kp, heads, axis=1), jnp.split(vp, heads, axis=1)
        return jnp.concatenate([one_head(a, b, c) for a, b, c in zip(qs, ks, vs)], axis=1)

    out = queries.astype(dtype)
    for _ in range(steps):
        out = update(out)
    return out


def _blockwise(q, kb, vb, mb, sim, sep, beta, k, power):
    nq, dv = q.shape[0], vb.shape[2]
    neg = jnp.asarray(-jnp.inf, q.dtype)

    if sep in ("softmax", "polynomial", "identity"):
        def body(carry, block):
            kk, vv, m = block
            s = _scores(q, kk, sim)
            if sep == "softmax":
                run_max, denom, acc = carry
                s = jnp.where(m[None, :], beta * s, neg)
                new_max = jnp.maximum(run_max, s.max(axis=1))
                safe = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
                scale = jnp.exp(jnp.where(jnp.isfinite(run_max), run_max - safe, neg))
                p = jnp.exp(s - safe[:, None])
                return (new_max, denom * scale + p.sum(1), acc * scale[:, None] + p @ vv), None
            denom, acc = carry
            w = jnp.where(m[None, :], jnp.maximum(s, 0.0) ** power if sep == "polynomial" else s, 0.0)
            return (denom + w.sum(1), acc + w @ vv), None

        if sep == "softmax":
            init = (jnp.full((nq,), neg), jnp.zeros((nq,), q.dtype), jnp.zeros((nq, dv), q.dtype))
            (_, denom, acc), _ = jax.lax.scan(body, init, (kb, vb, mb))
            return acc / denom[:, None]
        (denom, acc), _ = jax.lax.scan(body, (jnp.zeros((nq,), q.dtype), jnp.zeros((nq, dv), q.dtype)), (kb, vb, mb))
        if sep == "identity":
            return acc
        return acc / jnp.where(denom > 0, denom, 1.0)[:, None]

    # max and topk: a running top-k of (score, key index) over the blocks; values gathered at the end.
    kk_ = 1 if sep == "max" else k
    blk = kb.shape[1]

    def body(carry, block):
        best_s, best_i = carry
        kk, m, b = block
        s = jnp.where(m[None, :], _scores(q, kk, sim), neg)
        cand_s = jnp.concatenate([best_s, s], axis=1)
        cand_i = jnp.concatenate([best_i, jnp.broadcast_to(b * blk + jnp.arange(blk, dtype=jnp.int32), (nq, blk))], 1)
        top_s, pos = jax.lax.top_k(cand_s, kk_)
        return (top_s, jnp.take_along_axis(cand_i, pos, axis=1)), None

    init = (jnp.full((nq, kk_), neg), jnp.zeros((nq, kk_), jnp.int32))
    (top_s, top_i), _ = jax.lax.scan(body, init, (kb, mb, jnp.arange(kb.shape[0], dtype=jnp.int32)))
    top_v = vb.reshape(-1, dv)[top_i]  # (q, k, dv)
    if sep == "max":
        return top_v[:, 0]
    w = jax.nn.softmax(beta * top_s, axis=1)
    return jnp.einsum("qk,qkv->qv", w, top_v)
