"""Exact top-k cosine decoding of vectors into vocabulary words, the hot path of the store.

A full ``lax.top_k`` over 400k scores per query is slow on CPU. The top k words always lie in
the k blocks (of ``block`` consecutive words) with the highest block maxima, so selection runs
on the block maxima, then on the k * block candidates: exact, and nearly free next to the score
matmul. Queries go in blocks, so memory stays at (query_block x vocabulary) scores.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 512
QUERY_BLOCK = 64


def pad_vocabulary(unit: np.ndarray, block: int = BLOCK) -> jax.Array:
    """Unit rows padded with zero rows to a whole number of blocks, as a device array."""
    rows = -(-unit.shape[0] // block) * block
    return jnp.asarray(np.pad(unit, ((0, rows - unit.shape[0]), (0, 0))))


def top_k_cosine(outputs, vocab_blocks, vocab_size: int, k: int, exclude=None, *, block: int = BLOCK):
    """outputs: (q, d); vocab_blocks: (padded V, d) unit rows from ``pad_vocabulary``;
    exclude: (q,) word ids to leave out (-1: none). Returns (scores (q, k), ids (q, k)), best first."""
    outputs = jnp.asarray(outputs, jnp.float32)
    q = outputs.shape[0]
    exclude = jnp.full((q,), -1, jnp.int32) if exclude is None else jnp.asarray(exclude, jnp.int32)
    query_block = 1 if q == 1 else min(QUERY_BLOCK, 1 << (q - 1).bit_length())
    rows = -(-q // query_block) * query_block
    outputs = jnp.pad(outputs, ((0, rows - q), (0, 0)))
    exclude = jnp.pad(exclude, (0, rows - q), constant_values=-1)
    scores, ids = _top_k(outputs, exclude, vocab_blocks, vocab_size=vocab_size, k=k, block=block,
                         query_block=query_block)
    return scores[:q], ids[:q]


@partial(jax.jit, static_argnames=("vocab_size", "k", "block", "query_block"))
def _top_k(outputs, exclude, vocab, *, vocab_size, k, block, query_block):
    n_blocks = vocab.shape[0] // block
    kb = min(k, n_blocks)
    cols = jnp.arange(vocab.shape[0])

    def one_block(args):
        out, excl = args
        norms = jnp.linalg.norm(out, axis=1, keepdims=True)
        unit = out / jnp.where(norms > 0, norms, 1.0)
        s = unit @ vocab.T
        s = jnp.where((cols[None, :] >= vocab_size) | (cols[None, :] == excl[:, None]), -jnp.inf, s)
        grouped = s.reshape(s.shape[0], n_blocks, block)
        _, best_blocks = jax.lax.top_k(grouped.max(axis=2), kb)
        candidates = jnp.take_along_axis(grouped, best_blocks[:, :, None], axis=1).reshape(s.shape[0], kb * block)
        vals, pos = jax.lax.top_k(candidates, k)
        ids = jnp.take_along_axis(best_blocks, pos // block, axis=1) * block + pos % block
        return vals, ids

    blocks = (outputs.reshape(-1, query_block, outputs.shape[1]), exclude.reshape(-1, query_block))
    vals, ids = jax.lax.map(one_block, blocks)
    return vals.reshape(-1, k), ids.reshape(-1, k)
