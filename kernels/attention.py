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
