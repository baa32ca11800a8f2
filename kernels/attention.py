"""Attention recall: a query is scored against every stored key, the scores are turned into
weights, and the answer is the weighted blend of the stored values.

Shapes, one item per row: queries (q, d), keys (n, d), values (n, dv) -> (q, dv).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from kernels import names

# The similarities of the fuzzy store (softmax_attend), which needs the full weight matrix.
SIMILARITIES = ("dot", "scaled_dot", "cosine")


class Attended(NamedTuple):
    """outputs: (q, dv) blended values; weights: (q, n) attention weights (rows sum to 1)."""

    outputs: jax.Array
    weights: jax.Array


def similarity(queries, keys, kind: str):
    """Scores (q, n): dot products, dot / sqrt(d) (as in transformers), or cosines."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; use one of {', '.join(SIMILARITIES)}")
    sim = SIMILARITY_REGISTRY[kind]
    return sim.scores(sim.prepare(queries[None]), sim.prepare(keys[None]))[0]


@partial(jax.jit, static_argnames="kind")
def softmax_attend(queries, keys, values, beta=1.0, *, kind: str = "dot") -> Attended:
    """weights = softmax(beta * similarity(q, K)) over the stored keys; outputs = weights V."""
    scores = similarity(queries, keys, kind)
    # Scaled after the maximum is subtracted, and clamped: no overflow at any beta (see _exp_below).
    unnormalised = _exp_below(beta, scores - scores.max(-1, keepdims=True))
    weights = unnormalised / unnormalised.sum(-1, keepdims=True)
    return Attended(weights @ values, weights)


# ---------------------------------------------------------------------------------------------
# The blockwise core, shared by the array API below and the streamed sweep cell
# (kernels.attention_cell). Arrays carry a leading head axis h: queries (h, q, dh), a key block
# (h, b, dh), its values (h, b, dvh), valid (b,) marks real rows of a padded block.
#
# Each similarity and each separation is one small object in a registry: adding one is one
# entry here (plus its tests); the sweep, the command line and the store read the names.


class Similarity(NamedTuple):
    """prepare(x (h, m, dh)) -> per-row preprocessing of queries and keys; scores(q (h, q, dh),
    kb (h, b, dh)) -> (h, q, b) scores of prepared rows (higher is more similar)."""

    name: str
    prepare: Callable
    scores: Callable


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), jnp.finfo(x.dtype).tiny)


def _dot(q, kb):
    return jnp.einsum("hqd,hbd->hqb", q, kb)


def _euclidean(q, kb):
    sq = jnp.sum(q * q, -1)[:, :, None] + jnp.sum(kb * kb, -1)[:, None, :] - 2 * _dot(q, kb)
    return -jnp.sqrt(jnp.maximum(sq, 0.0))


def _manhattan(q, kb):
    # A reduction over d fused with the broadcast difference: XLA does not materialise the
    # (h, q, b, dh) difference, so memory stays O(q b).
    return -jnp.sum(jnp.abs(q[:, :, None, :] - kb[:, None, :, :]), axis=-1)


_same = lambda x: x
SIMILARITY_REGISTRY: dict[str, Similarity] = {s.name: s for s in (
    Similarity("dot", _same, _dot),
    Similarity("scaled_dot", _same, lambda q, kb: _dot(q, kb) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))),
    Similarity("cosine", _unit, _dot),
    Similarity("euclidean", _same, _euclidean),
    Similarity("manhattan", _same, _manhattan),
)}
ALL_SIMILARITIES = tuple(SIMILARITY_REGISTRY)
names.check_implemented("similarity", SIMILARITY_REGISTRY, names.SIMILARITIES)


class Knobs(NamedTuple):
    """Traced knobs of the separations: inverse temperature beta, polynomial degree."""

    beta: jax.Array | float = names.default("beta")
    degree: jax.Array | float = names.default("degree")


class Separation(NamedTuple):
    """A map from scores to weights, folded over key blocks with a running state.

    init(heads, nq, dvh, k, dtype) -> state before any block; update(state, scores (h, q, b),
    vb (h, b, dvh), valid (b,), knobs) -> state; result(state, knobs) -> recalled (h, q, dvh).
    method: the label of its rows. The knobs it reads are declared in ``kernels.names``."""

    name: str
    init: Callable
    update: Callable
    result: Callable
    method: str

    @property
    def knobs(self) -> tuple[str, ...]:
        return names.SEPARATIONS[self.name]


def _exp_below(beta, gap):
    """exp(beta * gap) for gaps to a running maximum (gap <= 0), clamped at exp(0): it never
    overflows, whatever beta (a huge beta is the hard maximum), even where XLA rounds the two
    reads of a score differently (fused, ``b * x - max(b * x)`` came out 255, not 0)."""
    return jnp.exp(jnp.minimum(beta * gap, 0.0))


def _softmax_update(state, scores, vb, valid, knobs):
    run_max, denom, acc = state  # run_max: the largest raw score so far (beta > 0 keeps the order)
    s = jnp.where(valid, scores, -jnp.inf)
    new_max = jnp.maximum(run_max, s.max(-1))
    safe = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # no valid key yet: nothing to rescale
    scale = jnp.where(jnp.isfinite(run_max), _exp_below(knobs.beta, run_max - safe), 0.0)
    p = _exp_below(knobs.beta, s - safe[..., None])  # invalid keys: s = -inf, so p = 0
    return new_max, denom * scale + p.sum(-1), acc * scale[..., None] + jnp.einsum("hqb,hbv->hqv", p, vb)


def _weighted_sum_update(weights):
    def update(state, scores, vb, valid, knobs):
        denom, acc = state
        w = jnp.where(valid, weights(scores, knobs), 0.0)
        return denom + w.sum(-1), acc + jnp.einsum("hqb,hbv->hqv", w, vb)
    return update


def _top_merge(top_s, scores, valid):
    """The best of the running top scores and a block's: (scores, positions among the
    candidates: < width for a running one, width + i for the block's key i)."""
    # Candidates: the running best first (earlier keys win ties, as a stable sort would), then the block.
    cand = jnp.concatenate([top_s, jnp.where(valid, scores, -jnp.inf)], axis=-1)
    return jax.lax.top_k(cand, top_s.shape[-1])


def _top_update(state, scores, vb, valid, knobs):
    top_s, top_v = state
    width = top_s.shape[-1]
    new_s, pos = _top_merge(top_s, scores, valid)
    from_old = jnp.take_along_axis(top_v, jnp.minimum(pos, width - 1)[..., None], axis=2)
    from_block = jax.vmap(lambda v, p: v[p])(vb, jnp.maximum(pos - width, 0))  # (h, q, width, dvh)
    return new_s, jnp.where((pos < width)[..., None], from_old, from_block)


def top_rows_update(state, scores, row0, valid):
    """_top_update carrying the running best keys' row numbers instead of their values:
    state (top scores (h, q, w), their rows (h, q, w) int32); the block's rows are row0 on.
    The same top_k of the same candidates as _top_update, so the same rows win; the caller
    fetches their values once at the end (recall from its values, a sweep cell from its cache
    of kept pairs). Carried per block, the values were (h, q, w, dvh) numbers selected and
    written: 0.54 of 2.62 s of a d = 1024, n = 2^15 top-k sweep cell."""
    top_s, top_i = state
    width = top_s.shape[-1]
    new_s, pos = _top_merge(top_s, scores, valid)
    from_old = jnp.take_along_axis(top_i, jnp.minimum(pos, width - 1), axis=-1)
    return new_s, jnp.where(pos < width, from_old, row0 + pos - width)


def top_rows_init(sep: Separation, heads: int, nq: int, k: int, dtype):
    """top_rows_update's state before any block: no score yet, row 0 (weight 0 until replaced)."""
    top_s = sep.init(heads, nq, 1, k, dtype)[0]
    return top_s, jnp.zeros(top_s.shape, jnp.int32)


# Separations whose state is the running best keys (top_rows_update serves them).
BY_ROWS = ("topk", "max")


def _top_init(width):
    def init(heads, nq, dvh, k, dtype):
        w = width or k  # running top scores and their values
        return jnp.full((heads, nq, w), -jnp.inf, dtype), jnp.zeros((heads, nq, w, dvh), dtype)
    return init


def _sums_init(heads, nq, dvh, k, dtype):
    return jnp.zeros((heads, nq), dtype), jnp.zeros((heads, nq, dvh), dtype)


def _topk_result(state, knobs):
    top_s, top_v = state  # sorted, best first
    best = jnp.where(jnp.isfinite(top_s[..., :1]), top_s[..., :1], 0.0)
    w = _exp_below(knobs.beta, top_s - best)  # empty slots hold -inf: weight 0
    return jnp.einsum("hqk,hqkv->hqv", w / w.sum(-1, keepdims=True), top_v)


def _polynomial_update(state, scores, vb, valid, knobs):
    """Weights relu(s)^degree, normalised; kept relative to the running maximum of relu(s), so
    a high degree or large scores cannot overflow (the limit is the hard maximum)."""
    run_max, denom, acc = state
    r = jnp.where(valid, jnp.maximum(scores, 0.0), 0.0)
    new_max = jnp.maximum(run_max, r.max(-1))
    safe = jnp.where(new_max > 0, new_max, 1.0)
    scale = jnp.minimum(run_max / safe, 1.0) ** knobs.degree
    w = jnp.minimum(r / safe[..., None], 1.0) ** knobs.degree
    return new_max, denom * scale + w.sum(-1), acc * scale[..., None] + jnp.einsum("hqb,hbv->hqv", w, vb)


def _normalised_result(state, knobs):
    denom, acc = state
    return acc / jnp.where(denom > 0, denom, 1.0)[..., None]


SEPARATION_REGISTRY: dict[str, Separation] = {s.name: s for s in (
    Separation("softmax",
               lambda h, nq, dvh, k, dtype: (jnp.full((h, nq), -jnp.inf, dtype), jnp.zeros((h, nq), dtype),
                                             jnp.zeros((h, nq, dvh), dtype)),
               _softmax_update, lambda state, knobs: state[2] / state[1][..., None], "online"),
    Separation("topk", _top_init(None), _top_update, _topk_result, "running-top-k"),
    Separation("max", _top_init(1), _top_update, lambda state, knobs: state[1][:, :, 0], "running-top-k"),
    Separation("polynomial",
               lambda h, nq, dvh, k, dtype: (jnp.zeros((h, nq), dtype), jnp.zeros((h, nq), dtype),
                                             jnp.zeros((h, nq, dvh), dtype)),
               _polynomial_update, lambda state, knobs: _normalised_result(state[1:], knobs), "online"),
    Separation("identity", _sums_init, _weighted_sum_update(lambda s, knobs: s),
               lambda state, knobs: state[1], "online"),
)}
SEPARATIONS = tuple(SEPARATION_REGISTRY)
names.check_implemented("separation", SEPARATION_REGISTRY, names.SEPARATIONS)


def check_settings(similarity: str, separation: str, *, d: int, dv: int, heads: int = 1, steps: int = 1,
                   k: int = 1) -> None:
    """Raise ValueError naming the bad setting and what is allowed."""
    if similarity not in SIMILARITY_REGISTRY:
        raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(ALL_SIMILARITIES)}")
    if separation not in SEPARATION_REGISTRY:
        raise ValueError(f"unknown separation {separation!r}; use one of {', '.join(SEPARATIONS)}")
    if heads < 1 or d % heads or dv % heads:
        raise ValueError(f"heads = {heads} must divide d = {d} and dv = {dv}")
    if steps < 1:
        raise ValueError(f"steps = {steps}: give 1 or more updates")
    if steps > 1 and dv != d:
        raise ValueError(f"steps = {steps} feeds outputs back as queries, which needs dv == d (got {dv} and {d})")
    if k < 1:
        raise ValueError(f"k = {k}: top-k needs k >= 1")


def split_heads(x, heads: int):
    """(m, d) -> (h, m, d / h)."""
    return x.reshape(x.shape[0], heads, x.shape[1] // heads).transpose(1, 0, 2)


def merge_heads(x):
    """(h, m, dh) -> (m, h * dh)."""
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


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
    sim, sep = SIMILARITY_REGISTRY[similarity], SEPARATION_REGISTRY[separation]
    kb = sim.prepare(split_heads(jnp.pad(keys.astype(dtype), ((0, num_blocks * blk - n), (0, 0))), heads))
    vb = split_heads(jnp.pad(values.astype(dtype), ((0, num_blocks * blk - n), (0, 0))), heads)
    knobs = Knobs(jnp.asarray(beta, dtype), jnp.asarray(degree, dtype))
    by_rows = separation in BY_ROWS  # carry the best keys' rows, not their values (top_rows_update)

    def attend(qblock):  # (qb, d) -> (qb, dv)
        qh = sim.prepare(split_heads(qblock, heads))

        def body(j, state):
            kj = jax.lax.dynamic_slice_in_dim(kb, j * blk, blk, axis=1)
            valid = j * blk + jnp.arange(blk) < n
            if by_rows:
                return top_rows_update(state, sim.scores(qh, kj), j * blk, valid)
            vj = jax.lax.dynamic_slice_in_dim(vb, j * blk, blk, axis=1)
            return sep.update(state, sim.scores(qh, kj), vj, valid, knobs)

        init = (top_rows_init(sep, heads, qblock.shape[0], k, dtype) if by_rows
                else sep.init(heads, qblock.shape[0], dv // heads, k, dtype))
        state = jax.lax.fori_loop(0, num_blocks, body, init)
        if by_rows:  # the winners' values, read once (vb: (heads, rows, dv / heads))
            top_s, top_i = state
            state = (top_s, jax.vmap(lambda v, rows: v[rows])(vb, top_i))
        return merge_heads(sep.result(state, knobs))

    nq = queries.shape[0]
    qb = max(1, min(query_block, nq))
    rows = -(-nq // qb) * qb
    out = queries.astype(dtype)
    for _ in range(steps):
        blocks = jnp.pad(out, ((0, rows - nq), (0, 0))).reshape(-1, qb, out.shape[1])
        out = jax.lax.map(attend, blocks).reshape(rows, dv)[:nq]
    return out
