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


def check_settings(similarity: str, separation: str, *, d: int, dv: int, heads: int = 1, steps: int = 1,
                   k: int = 1) -> None:
    """Raise ValueError naming the bad setting and what is allowed."""
    if similarity not in ALL_SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(ALL_SIMILARITIES)}")
    if separation not in SEPARATIONS:
        raise ValueError(f"unknown separation {separation!r}; use one of {', '.join(SEPARATIONS)}")
    if heads < 1 or d % heads or dv % heads:
        raise ValueError(f"heads = {heads} must divide d = {d} and dv = {dv}")
    if steps < 1:
        raise ValueError(f"steps = {steps}: give 1 or more updates")
    if steps > 1 and dv != d:
        raise ValueError(f"steps = {steps} feeds outputs back as queries, which needs dv == d (got {dv} and {d})")
    if k < 1:
        raise ValueError(f"k = {k}: top-k needs k >= 1")


# ---------------------------------------------------------------------------------------------
# The blockwise core, shared by the array API below and the streamed sweep cell
# (kernels.attention_cell). Arrays carry a leading head axis h: queries (h, q, dh), a key block
# (h, b, dh), its values (h, b, dvh), valid (b,) marks real rows of a padded block.


def split_heads(x, heads: int):
    """(m, d) -> (h, m, d / h)."""
    return x.reshape(x.shape[0], heads, x.shape[1] // heads).transpose(1, 0, 2)


def merge_heads(x):
    """(h, m, dh) -> (m, h * dh)."""
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), jnp.finfo(x.dtype).tiny)


def prepare(x, similarity: str):
    """Per-row preprocessing of queries or keys (h, m, dh): unit length for cosine, else as is."""
    return _unit(x) if similarity == "cosine" else x


def block_scores(q, kb, similarity: str):
    """Scores (h, q, b) of prepared queries (h, q, dh) against a prepared key block (h, b, dh)."""
    if similarity in ("dot", "cosine"):
        return jnp.einsum("hqd,hbd->hqb", q, kb)
    if similarity == "scaled_dot":
        return jnp.einsum("hqd,hbd->hqb", q, kb) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    if similarity == "euclidean":
        sq = jnp.sum(q * q, -1)[:, :, None] + jnp.sum(kb * kb, -1)[:, None, :] - 2 * jnp.einsum("hqd,hbd->hqb", q, kb)
        return -jnp.sqrt(jnp.maximum(sq, 0.0))
    if similarity == "manhattan":
        # A reduction over d fused with the broadcast difference: XLA does not materialise
        # the (h, q, b, dh) difference, so memory stays O(q b).
        return -jnp.sum(jnp.abs(q[:, :, None, :] - kb[:, None, :, :]), axis=-1)
    raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(ALL_SIMILARITIES)}")


def online_init(separation: str, heads: int, nq: int, dvh: int, k: int, dtype):
    """The running state of one separation before any key block is seen."""
    neg = jnp.full((heads, nq), -jnp.inf, dtype)
    zeros = jnp.zeros((heads, nq, dvh), dtype)
    if separation == "softmax":  # running max, denominator, weighted sum
        return (neg, jnp.zeros((heads, nq), dtype), zeros)
    if separation in ("polynomial", "identity"):
        return (jnp.zeros((heads, nq), dtype), zeros)
    width = 1 if separation == "max" else k  # running top-k scores and their values
    return (jnp.full((heads, nq, width), -jnp.inf, dtype), jnp.zeros((heads, nq, width, dvh), dtype))


def online_update(separation: str, state, scores, vb, valid, beta, degree):
    """Fold a block in: scores (h, q, b), values vb (h, b, dvh), valid (b,)."""
    neg = jnp.asarray(-jnp.inf, scores.dtype)
    if separation == "softmax":
        run_max, denom, acc = state
        s = jnp.where(valid, beta * scores, neg)
        new_max = jnp.maximum(run_max, s.max(-1))
        safe = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # no valid key yet: nothing to rescale
        scale = jnp.exp(jnp.where(jnp.isfinite(run_max), run_max - safe, neg))
        p = jnp.exp(s - safe[..., None])
        return (new_max, denom * scale + p.sum(-1), acc * scale[..., None] + jnp.einsum("hqb,hbv->hqv", p, vb))
    if separation in ("polynomial", "identity"):
        denom, acc = state
        w = jnp.maximum(scores, 0.0) ** degree if separation == "polynomial" else scores
        w = jnp.where(valid, w, 0.0)
        return (denom + w.sum(-1), acc + jnp.einsum("hqb,hbv->hqv", w, vb))
    top_s, top_v = state
    width = top_s.shape[-1]
    # Candidates: the running best first (earlier keys win ties, as a stable sort would), then the block.
    cand = jnp.concatenate([top_s, jnp.where(valid, scores, neg)], axis=-1)
    new_s, pos = jax.lax.top_k(cand, width)
    from_old = jnp.take_along_axis(top_v, jnp.minimum(pos, width - 1)[..., None], axis=2)
    from_block = jax.vmap(lambda v, p: v[p])(vb, jnp.maximum(pos - width, 0))  # (h, q, width, dvh)
    return (new_s, jnp.where((pos < width)[..., None], from_old, from_block))


def online_result(separation: str, state, beta):
    """The recalled values (h, q, dvh) from a final state."""
    if separation == "softmax":
        _, denom, acc = state
        return acc / denom[..., None]
    if separation == "identity":
        return state[1]
    if separation == "polynomial":
        denom, acc = state
        return acc / jnp.where(denom > 0, denom, 1.0)[..., None]
    top_s, top_v = state
    if separation == "max":
        return top_v[:, :, 0]
    w = jax.nn.softmax(beta * top_s, axis=-1)
    return jnp.einsum("hqk,hqkv->hqv", w, top_v)


@partial(jax.jit, static_argnames=("similarity", "separation", "k", "heads", "block_size", "query_block", "steps"))
def recall(queries, keys, values, *, similarity: str = "dot", separation: str = "softmax", beta=1.0, k: int = 1,
           heads: int = 1, block_size: int = 512, query_block: int = 1024, steps: int = 1, degree=3.0):
    """Attention recall sep(sim(q, K)) V, blockwise over queries and keys: a block of
    ``query_block`` queries visits the keys ``block_size`` at a time with running (online)
    statistics, so the (q, n) score matrix is never materialised. Peak memory
    O(query_block x block_size + (q + n) x d).

    queries (q, d), keys (n, d), values (n, dv) -> (q, dv). similarity: dot, scaled_dot
    (dot / sqrt(head dim)), cosine, euclidean (negative distance), manhattan (negative L1).
    separation: softmax (inverse temperature beta), topk (softmax over the k best scores),
    max (the best key's value; ties go to the earlier key), polynomial (relu(score)^degree,
    normalised), identity (raw scores: linear attention). heads: split d and dv into that many
    heads and concatenate. steps: apply the update that many times, the output becoming the
    next query (auto-association, as in modern Hopfield networks; needs dv == d).
    """
    n, d = keys.shape
    dv = values.shape[1]
    check_settings(similarity, separation, d=d, dv=dv, heads=heads, steps=steps, k=k)
    if separation == "topk" and k > n:
        raise ValueError(f"k = {k} must be between 1 and the number of stored pairs {n}")
    dtype = jnp.result_type(queries.dtype, keys.dtype, values.dtype, jnp.float32)
    blk = max(1, min(block_size, n))
    num_blocks = -(-n // blk)
    kb = prepare(split_heads(jnp.pad(keys.astype(dtype), ((0, num_blocks * blk - n), (0, 0))), heads), similarity)
    vb = split_heads(jnp.pad(values.astype(dtype), ((0, num_blocks * blk - n), (0, 0))), heads)
    beta = jnp.asarray(beta, dtype)
    degree = jnp.asarray(degree, dtype)

    def attend(qblock):  # (qb, d) -> (qb, dv)
        qh = prepare(split_heads(qblock, heads), similarity)

        def body(j, state):
            kj = jax.lax.dynamic_slice_in_dim(kb, j * blk, blk, axis=1)
            vj = jax.lax.dynamic_slice_in_dim(vb, j * blk, blk, axis=1)
            valid = j * blk + jnp.arange(blk) < n
            return online_update(separation, state, block_scores(qh, kj, similarity), vj, valid, beta, degree)

        state = jax.lax.fori_loop(0, num_blocks, body,
                                  online_init(separation, heads, qblock.shape[0], dv // heads, k, dtype))
        return merge_heads(online_result(separation, state, beta))

    nq = queries.shape[0]
    qb = max(1, min(query_block, nq))
    rows = -(-nq // qb) * qb
    out = queries.astype(dtype)
    for _ in range(steps):
        blocks = jnp.pad(out, ((0, rows - nq), (0, 0))).reshape(-1, qb, out.shape[1])
        out = jax.lax.map(attend, blocks).reshape(rows, dv)[:nq]
    return out
