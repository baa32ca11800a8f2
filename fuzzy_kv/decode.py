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

BLOCK = 1024
QUERY_BLOCK = 256  # 256 x 400k float32 scores = 410 MB at a time: fewer, larger matmuls


def pad_vocabulary(unit: np.ndarray, block: int = BLOCK) -> jax.Array:
    """Unit rows padded to a whole number of blocks, as a device array, with one more column:
    0 for real words and -1e30 for the padding, so that a query carrying a 1 in that column
    scores padding at -1e30 without a masking pass over the scores."""
    rows = -(-unit.shape[0] // block) * block
    padded = np.zeros((rows, unit.shape[1] + 1), np.float32)
    padded[: unit.shape[0], :-1] = unit
    padded[unit.shape[0]:, -1] = -1e30
    return jnp.asarray(padded)


MAX_BLOCKS_PER_CALL = 16


def top_k_cosine(outputs, vocab_blocks, k: int, exclude=None, *, block: int = BLOCK):
    """outputs: (q, d); vocab_blocks: (padded V, d + 1) from ``pad_vocabulary``; exclude: (q,)
    word ids to leave out (-1: none). Returns (scores (q, k), ids (q, k)), best first.

    Queries go in blocks of a power of two up to QUERY_BLOCK rows, and the blocks in calls of
    1, 2, 4, ... MAX_BLOCKS_PER_CALL blocks (the binary digits of their count), so batches of any
    size reuse a handful of compiled programs: looping over batches of varying size does not
    recompile. Within a call the blocks run in a loop that reuses one score buffer."""
    outputs = np.asarray(outputs, np.float32)
    q = outputs.shape[0]
    exclude = np.full((q,), -1, np.int32) if exclude is None else np.asarray(exclude, np.int32)
    query_block = 1 if q <= 1 else min(QUERY_BLOCK, 1 << (q - 1).bit_length())
    rows = -(-q // query_block) * query_block
    outputs = np.pad(outputs, ((0, rows - q), (0, 0)))
    exclude = np.pad(exclude, (0, rows - q), constant_values=-1)
    parts, start, left = [], 0, rows // query_block
    while left:
        take = min(MAX_BLOCKS_PER_CALL, 1 << (left.bit_length() - 1))
        stop = start + take * query_block
        # One call at a time: two 400 MB score loops running at once only fight over memory.
        parts.append(jax.block_until_ready(_top_k(outputs[start:stop], exclude[start:stop], vocab_blocks, k=k,
                                                  block=block, query_block=query_block)))
        start, left = stop, left - take
    scores = jnp.concatenate([p[0] for p in parts])
    ids = jnp.concatenate([p[1] for p in parts])
    return scores[:q], ids[:q]


@partial(jax.jit, static_argnames=("k", "block", "query_block"))
def _top_k(outputs, exclude, vocab, *, k, block, query_block):
    n_blocks = vocab.shape[0] // block
    # One excluded word can push one more word into the top k: look at one more block.
    kb = min(k + 1, n_blocks)

    def one_block(args):
        out, excl = args
        norms = jnp.linalg.norm(out, axis=1, keepdims=True)
        unit = jnp.concatenate([out / jnp.where(norms > 0, norms, 1.0), jnp.ones((out.shape[0], 1), out.dtype)], 1)
        grouped = (unit @ vocab.T).reshape(out.shape[0], n_blocks, block)  # one pass writes the scores
        _, best_blocks = jax.lax.top_k(grouped.max(axis=2), kb)             # one pass reads them
        candidates = jnp.take_along_axis(grouped, best_blocks[:, :, None], axis=1)
        ids = (best_blocks[:, :, None] * block + jnp.arange(block)).reshape(out.shape[0], kb * block)
        candidates = jnp.where(ids == excl[:, None], -jnp.inf, candidates.reshape(out.shape[0], kb * block))
        vals, pos = jax.lax.top_k(candidates, k)
        return vals, jnp.take_along_axis(ids, pos, axis=1)

    blocks = (outputs.reshape(-1, query_block, outputs.shape[1]), exclude.reshape(-1, query_block))
    vals, ids = jax.lax.map(one_block, blocks)
    return vals.reshape(-1, k), ids.reshape(-1, k)
