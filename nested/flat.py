"""Flat baselines on the same data as a nested read: every readable path as one composite key in
one flat memory, and a "transformer-like" stack of reads over one memory of every level's entries.

Composite keys of a path (k_1 .. k_m), each k_l a key vector of d coordinates:

- ``sum``: k_1 + ... + k_m (bundling: order-blind);
- ``concat``: [k_1, ..., k_m, 0 ...] (L d coordinates; exact, but the key grows with depth);
- ``hadamard``: k_1 * r_1 + ... + k_m * r_m, r_l a random +-1 vector per level (binding by
  position, then bundling);
- ``circular``: k_1 (*) k_2 (*) ... (*) k_m, circular convolution (holographic reduced
  representations: binding the whole path into d coordinates).

``stacked``: one memory holds every slot of every level: key = the slot's key + its parent's
context vector, value = its child's context vector (an internal slot) or its value (the last
level). Read l's output plus the next path key is read l + 1's query, the way a transformer's
residual stream adds the next token before the next attention layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from kernels import attention, matrix
from nested.build import Tree

COMPOSITIONS = ("sum", "concat", "hadamard", "circular")


def _signs(depth: int, d: int, seed: int) -> np.ndarray:
    return np.where(np.random.default_rng(seed).random((depth, d)) < 0.5, -1.0, 1.0)


def compose(paths: np.ndarray, lengths: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """Composite keys (Q, d) (concat: (Q, L d)) of query paths (Q, L, d) of the given lengths."""
    if how not in COMPOSITIONS:
        raise ValueError(f"unknown composition {how!r}; use one of {', '.join(COMPOSITIONS)}")
    q, depth, d = paths.shape
    live = (np.arange(depth)[None, :] < np.asarray(lengths)[:, None])[..., None]
    x = np.where(live, paths, 0.0)
    if how == "sum":
        return x.sum(1)
    if how == "concat":
        return x.reshape(q, depth * d)
    if how == "hadamard":
        return (x * _signs(depth, d, seed)[None]).sum(1)
    spectra = np.where(live, np.fft.rfft(paths, axis=-1), 1.0)  # a missing level: the identity of binding
    return np.fft.irfft(np.prod(spectra, axis=1), n=d, axis=-1)


def path_pairs(tree: Tree, key_vectors: np.ndarray, value_vectors: np.ndarray):
    """Every readable path as (query path (P, L, d), lengths (P,), value vectors (P, dv))."""
    from nested.build import query_paths

    paths, lengths, targets = query_paths(tree, key_vectors)
    return paths, lengths, value_vectors[targets]


def flat_attention(stored_keys, stored_values, queries, *, similarity="dot", separation="softmax", beta=1.0, k=1):
    """One flat attention memory of the composite keys (kernels.attention.recall)."""
    return attention.recall(jnp.asarray(queries), jnp.asarray(stored_keys), jnp.asarray(stored_values),
                            similarity=similarity, separation=separation, beta=beta, k=k)


def flat_pinv(stored_keys, stored_values, queries):
    """One pseudoinverse memory W = K^+ V of the composite keys, recall q W (kernels.matrix.pinv)."""
    W = matrix.pinv(jnp.asarray(stored_keys), jnp.asarray(stored_values))
    return jnp.asarray(queries) @ W


class Stacked(NamedTuple):
    """The transformer-like memory: keys (S, d), values (S, d) (value dimension d: the output
    of a read is the next query), contexts (nodes, d) per level flattened, and where the
    leaves' values sit (they need dv == d)."""

    keys: np.ndarray
    values: np.ndarray
    root: np.ndarray


def stacked_memory(tree: Tree, key_vectors: np.ndarray, value_vectors: np.ndarray, seed: int = 0) -> Stacked:
    """One memory of every slot of every level (see the module docstring). Values and keys must
    have the same dimension."""
    d = key_vectors.shape[1]
    if value_vectors.shape[1] != d:
        raise ValueError(f"the stacked baseline feeds outputs back as queries: values need d = {d} coordinates, "
                         f"got {value_vectors.shape[1]}")
    rng = np.random.default_rng(seed)
    contexts = [rng.standard_normal((lev.keys.shape[0], d)) / np.sqrt(d) for lev in tree.levels]
    keys, values = [], []
    for l, lev in enumerate(tree.levels):
        for node in range(lev.keys.shape[0]):
            for j in range(lev.keys.shape[1]):
                if lev.keys[node, j] < 0:
                    continue
                keys.append(key_vectors[lev.keys[node, j]] + contexts[l][node])
                if lev.child[node, j] >= 0 and l + 1 < len(tree.levels):
                    # an internal slot leads to its child's context, plus its own value if it has one (DAG)
                    own = value_vectors[lev.values[node, j]] if lev.values[node, j] >= 0 else 0.0
                    values.append(contexts[l + 1][lev.child[node, j]] + own)
                else:
                    values.append(value_vectors[lev.values[node, j]] if lev.values[node, j] >= 0 else np.zeros(d))
    return Stacked(np.asarray(keys, key_vectors.dtype), np.asarray(values, key_vectors.dtype),
                   contexts[0][0].astype(key_vectors.dtype))


def stacked_read(memory: Stacked, paths: np.ndarray, lengths: np.ndarray, *, similarity="dot",
                 separation="softmax", beta=1.0, k=1) -> np.ndarray:
    """L reads over the one memory: query_1 = path key 1 + the root's context; query_{l+1} =
    output_l + path key l + 1. Returns each path's output after its own length of reads."""
    q, depth, _ = paths.shape
    state = np.asarray(memory.root)[None, :] + paths[:, 0]
    out = np.zeros_like(state)
    for l in range(depth):
        state = np.asarray(attention.recall(jnp.asarray(state), jnp.asarray(memory.keys), jnp.asarray(memory.values),
                                            similarity=similarity, separation=separation, beta=beta,
                                            k=min(k, len(memory.keys))))
        out = np.where((np.asarray(lengths) == l + 1)[:, None], state, out)
        if l + 1 < depth:
            state = state + paths[:, l + 1]
    return out
