"""Reading a nested dictionary with attention, level by level: pure JAX.

A tree is a tuple of levels (built from a Python dict by nested.build). Level l holds the
N_l nodes reached by l keys, each with up to B child slots:

    keys (N_l, B, d), mask (N_l, B), child (N_l, B) int32 (the child's node index at level
    l + 1, or -1), values (N_l, B, dv) (a leaf's value, or a DAG node's qualifier; 0 where
    none).

A query is a path of key vectors ``(L, d)`` and its length m (1..L); the read returns the
blend of the values of the slots at level m - 1, each weighted by its path weight:

- ``soft``: every level weights the children of every node by a softmax (inverse temperature
  beta) over that node's children, and a child's path weight is its parent's times that: the
  product of per-level softmaxes. The path weights of one level sum to 1 (a distribution over
  paths, the global normalisation), so the blend is a convex combination of stored values and
  stays bounded; weight that reaches a leaf above level m - 1 is lost (the query asked for a
  longer path). Cost O(tree size x d) per query.
- ``sparse``: the same with sparsemax instead of softmax (exact zeros, differentiable almost
  everywhere).
- ``topk``: a beam: only the k best nodes (by path log-weight) of each level are expanded, so
  the cost is O(depth k B d) per query; the read-out blends the k best slots of level m - 1
  with their path weights renormalised over those k. k = 1 is greedy hard selection. A beam
  holds paths (a node reached by several paths fills several entries); with k at least the
  number of paths to the widest level it equals ``soft`` where every path reaches level m - 1.
  Gradients flow through the selected weights (the choice itself is piecewise constant).

Scores come from ``kernels.attention.SIMILARITY_REGISTRY`` (the flat memories' scoring).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.attention import SIMILARITY_REGISTRY, _exp_below

MODES = ("soft", "sparse", "topk")


class Level(NamedTuple):
    keys: jax.Array     # (N, B, d)
    mask: jax.Array     # (N, B) bool
    child: jax.Array    # (N, B) int32, -1: no child
    values: jax.Array   # (N, B, dv)
    # (N, P) int32: the slots of the level above (flat, node * B + slot) whose child each node
    # is, -1 padded (P: the largest number of parents; 1 in a tree, more in a DAG). With it, the
    # dense modes push weights down by a gather instead of a scatter (faster); None at the root.
    parents: jax.Array | None = None


def _scores(similarity: str, q, keys):
    """q (d,), keys (..., d) -> (...) scores, with the flat memories' similarity."""
    sim = SIMILARITY_REGISTRY[similarity]
    flat = keys.reshape(1, -1, keys.shape[-1])
    s = sim.scores(sim.prepare(q[None, None, :]), sim.prepare(flat))
    return s.reshape(keys.shape[:-1])


def sparsemax(z, mask):
    """Sparsemax over the last axis (Martins & Astudillo 2016): the Euclidean projection of z
    onto the simplex; masked entries get 0, and so does a row with no valid entry. A masked
    entry stands in as max - 2, below any threshold (tau >= max - 1), so it is never in the
    support and every number stays finite (no inf in the gradient)."""
    top = jnp.max(jnp.where(mask, z, -jnp.inf), axis=-1, keepdims=True)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    zm = jnp.where(mask, z, top - 2.0)
    zs = -jnp.sort(-zm, axis=-1)
    ks = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cum = jnp.cumsum(zs, axis=-1)
    k = jnp.maximum(jnp.sum(1 + ks * zs > cum, axis=-1, keepdims=True), 1)
    tau = (jnp.take_along_axis(cum, k - 1, axis=-1) - 1) / k.astype(z.dtype)
    return jnp.where(mask, jnp.maximum(zm - tau, 0.0), 0.0)


def _local_weights(mode: str, s, mask, beta):
    """Weights of each node's children (..., B), summing to 1 over valid children."""
    if mode == "sparse":
        return sparsemax(beta * s, mask)
    top = jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1, keepdims=True)
    p = jnp.where(mask, _exp_below(beta, s - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    return p / jnp.maximum(p.sum(-1, keepdims=True), jnp.finfo(s.dtype).tiny)


def _weighted_children(mode: str, s, mask, parent, beta):
    """Path weights of the children of a tile of nodes, (qb, tn, B): the parents' weights
    parent (qb, tn) times each node's local weights; and the weight that reaches the tile's
    slots, per node (qb, tn): the parent's where the node has a valid child. Soft mode divides
    once per node, not once per child (the elementwise passes over the (qb, tn, B) scores are
    what the read's time is made of beyond its products: bench.profile_nested)."""
    if mode == "sparse":
        local = _local_weights(mode, s, mask[None], beta)
        return parent[:, :, None] * local, parent * jnp.sum(local, -1)
    top = jnp.max(jnp.where(mask[None], s, -jnp.inf), axis=-1, keepdims=True)
    p = jnp.where(mask[None], _exp_below(beta, s - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    total = p.sum(-1)
    return p * (parent / jnp.maximum(total, jnp.finfo(s.dtype).tiny))[:, :, None], _reached(mask, parent)


def _reached(mask, parent):
    """The weight that reaches a tile's slots in soft mode: the parent's wherever the node has a
    valid child (its softmax then sums to 1). Taken from the mask, not from the sum of the
    exponentials: a second consumer of that sum split XLA's fusion of the exponentials and the
    weights, and the million-leaf read took 13.0-13.8 s instead of 8.5-9.4 s."""
    return jnp.where(jnp.any(mask, axis=-1)[None], parent, 0.0)


# Similarities whose score is a scaled inner product of the prepared vectors, |s| <= scale(d)
# |q| |k| (Cauchy-Schwarz): soft mode can shift a node's exponents by that bound instead of by
# the node's maximum (below).
_INNER_PRODUCT_SCALE = {"dot": lambda d: 1.0, "cosine": lambda d: 1.0, "scaled_dot": lambda d: d ** -0.5}


def _bounded_children(s, mask, parent, shift):
    """Soft mode's _weighted_children with each node's exponents shifted by ``shift`` ((qb, tn)
    or (qb, 1)), an upper bound on |beta s| over the node instead of its maximum: softmax is
    shift-invariant, and with every |beta s| <= shift each exp(beta s - shift) lies in
    [exp(-2 shift), 1], so no node's sum underflows where 2 shift stays above the dtype's
    smallest normal (the caller checks). It saves the maximum's pass over the scores
    (bench.profile_nested: the tile body by each node's maximum against the level loop)."""
    p = jnp.where(mask[None], jnp.exp(s - shift[..., None]), 0.0)
    total = p.sum(-1)
    return p * (parent / jnp.maximum(total, jnp.finfo(s.dtype).tiny))[:, :, None], _reached(mask, parent)


def _log_local(s, mask, beta):
    """Log of the softmax weights of each node's children; -inf where masked."""
    z = jnp.where(mask, beta * s, -jnp.inf)
    top = jnp.max(z, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return z - top - jnp.log(jnp.maximum(jnp.sum(jnp.exp(z - top), -1, keepdims=True), jnp.finfo(s.dtype).tiny))


# Slots per tile of a level in the dense modes: the scores, weights and read-out of one tile of
# nodes for one block of queries stay in cache (256 queries x 4096 slots x 4 bytes = 4 MiB)
# instead of streaming (queries x every slot) arrays through memory several times.
TILE_SLOTS = 4096


def _tile_nodes(n: int, b: int) -> int:
    """The largest divisor of n with at most max(TILE_SLOTS, b) slots: whole nodes per tile."""
    limit = max(TILE_SLOTS // max(b, 1), 1)
    return max(t for t in range(1, min(n, limit) + 1) if n % t == 0)


def _key_norm(lev, similarity: str):
    """The largest norm of a level's valid prepared keys (0 for an empty level)."""
    sim = SIMILARITY_REGISTRY[similarity]
    norms = jnp.linalg.norm(sim.prepare(lev.keys), axis=-1)
    return jnp.max(jnp.where(lev.mask, norms, 0.0), initial=0.0)


def _dense_level(lev, q, w, here, t, *, mode, sim, beta, keep, key_norm=None):
    """One level of a dense read, a tile of nodes at a time: for each query of the block q
    (qb, d), its parents' weights w (qb, N), whether it reads out here (qb,) and its target
    slot t (qb,). Returns the read-out (qb, dv), the mass and the target's weight here, and
    (keep) the children's path weights (qb, N B) for the next level. key_norm: the level's
    _key_norm, for soft mode's bounded shift (computed here when not given)."""
    n, b, d = lev.keys.shape
    qb, dv = q.shape[0], lev.values.shape[-1]
    tn = _tile_nodes(n, b)
    tiles = n // tn
    prepared = sim.prepare(q[None])
    reads = jnp.any(here)

    def scan(children):
        def tile(carry, x):
            out, mass, true_w = carry
            keys, mask, values, wp, first = x
            s = sim.scores(prepared, sim.prepare(keys.reshape(1, tn * b, d)))[0].reshape(qb, tn, b)
            cw, reached = children(s, mask, wp)
            cw = cw.reshape(qb, tn * b)
            # The read-out product only where some query of the block ends at this level.
            out = out + jax.lax.cond(reads, lambda: cw @ values.reshape(tn * b, dv),
                                     lambda: jnp.zeros((qb, dv), q.dtype))
            inside = (t >= first) & (t < first + tn * b)
            picked = jnp.take_along_axis(cw, jnp.clip(t - first, 0, tn * b - 1)[:, None], 1)[:, 0]
            return (out, mass + reached.sum(1), true_w + jnp.where(inside, picked, 0.0)), (cw if keep else None)

        zeros = jnp.zeros((qb,), q.dtype)
        xs = (lev.keys.reshape(tiles, tn, b, d), lev.mask.reshape(tiles, tn, b),
              lev.values.reshape(tiles, tn, b, dv), w.reshape(qb, tiles, tn).transpose(1, 0, 2),
              jnp.arange(tiles, dtype=jnp.int32) * (tn * b))
        return jax.lax.scan(tile, (jnp.zeros((qb, dv), q.dtype), zeros, zeros), xs)

    def by_maximum(s, mask, wp):
        return _weighted_children(mode, s, mask, wp, beta)

    if mode == "soft" and sim.name in _INNER_PRODUCT_SCALE:
        if key_norm is None:
            key_norm = _key_norm(lev, sim.name)
        # |beta s| <= shift for every slot of the level (Cauchy-Schwarz); softmax is
        # shift-invariant, so the shift carries no gradient.
        shift = jax.lax.stop_gradient(jnp.abs(beta) * _INNER_PRODUCT_SCALE[sim.name](d) * key_norm *
                                      jnp.linalg.norm(prepared[0], axis=-1))  # (qb,)
        # exp(-2 shift) must stay a normal number, with room for the sum and the division.
        safe = jnp.all(2 * shift <= -jnp.log(jnp.finfo(q.dtype).tiny) - 8.0)
        bounded = lambda s, mask, wp: _bounded_children(beta * s, mask, wp, shift[:, None])  # noqa: E731
        (out, mass, true_w), weights = jax.lax.cond(safe, lambda: scan(bounded), lambda: scan(by_maximum))
    else:
        (out, mass, true_w), weights = scan(by_maximum)
    if keep:
        weights = weights.transpose(1, 0, 2).reshape(qb, n * b)
    return out, mass, true_w, weights


def _dense_block(levels, q, m, t, *, mode, similarity, beta, key_norms=None):
    """soft / sparse for a block of queries q (qb, L, d), lengths m (qb,), target slots t (qb,):
    every node of every level, a tile of nodes at a time (_dense_level); weights go down by a
    gather over each node's parents (a node reached by several paths, in a DAG, sums their
    weights), or a scatter where no parents table is given. key_norms: each level's
    _key_norm (soft mode; computed once per read, not once per block)."""
    sim = SIMILARITY_REGISTRY[similarity]
    qb, dv = q.shape[0], levels[0].values.shape[-1]
    w = jnp.ones((qb, levels[0].keys.shape[0]), q.dtype)
    out = jnp.zeros((qb, dv), q.dtype)
    mass = jnp.zeros((qb,), q.dtype)
    true_w = jnp.zeros((qb,), q.dtype)
    for l, lev in enumerate(levels):
        n, b, _ = lev.keys.shape
        here = m == l + 1
        last = l + 1 == len(levels)
        read, level_mass, level_true, flat = _dense_level(lev, q[:, l], w, here, t, mode=mode, sim=sim, beta=beta,
                                                          keep=not last,
                                                          key_norm=None if key_norms is None else key_norms[l])
        out = jnp.where(here[:, None], read, out)
        mass = jnp.where(here, level_mass, mass)
        true_w = jnp.where(here, level_true, true_w)
        if not last:
            nxt = levels[l + 1]
            n_next = nxt.keys.shape[0]
            padded = jnp.concatenate([flat, jnp.zeros((qb, 1), q.dtype)], axis=1)  # slot n b: nothing
            if nxt.parents is not None:
                w = padded[:, jnp.where(nxt.parents >= 0, nxt.parents, n * b)].sum(-1)
            else:
                sink = jnp.where(lev.child >= 0, lev.child, n_next).reshape(-1)  # no child: a sink, dropped
                w = jnp.zeros((qb, n_next + 1), q.dtype).at[:, sink].add(flat)[:, :n_next]
    return out, mass, true_w


def _beam_read(levels, q, m, t, *, k, similarity, beta):
    """topk: a beam of the k best nodes per level, by path log-weight."""
    idx = jnp.zeros((k,), jnp.int32)
    logw = jnp.full((k,), -jnp.inf, q.dtype).at[0].set(0.0)
    out = jnp.zeros((levels[0].values.shape[-1],), q.dtype)
    mass = jnp.zeros((), q.dtype)
    target = jnp.zeros((), q.dtype)
    for l, lev in enumerate(levels):
        b = lev.keys.shape[1]
        keys, mask, child = lev.keys[idx], lev.mask[idx] & jnp.isfinite(logw)[:, None], lev.child[idx]
        cand = (logw[:, None] + _log_local(_scores(similarity, q[l], keys), mask, beta)).reshape(-1)  # (k B,)
        width = min(k, cand.shape[0])
        top, pos = jax.lax.top_k(cand, width)
        ok = jnp.isfinite(top)
        best = jnp.where(ok[0], top[0], 0.0)
        w = jnp.where(ok, jnp.exp(top - best), 0.0)
        picked = lev.values[idx][pos // b, pos % b]  # (width, dv)
        here = l == m - 1
        out = jnp.where(here, jnp.einsum("k,kv->v", w / jnp.maximum(w.sum(), jnp.finfo(q.dtype).tiny), picked), out)
        mass = jnp.where(here, jnp.sum(jnp.where(ok, jnp.exp(top), 0.0)), mass)
        hit = ok & (idx[pos // b] * b + pos % b == t)  # beam entries (paths) that end in the target slot
        target = jnp.where(here, jnp.sum(jnp.where(hit, jnp.exp(top), 0.0)), target)
        if l + 1 < len(levels):
            inner = jnp.where(child.reshape(-1) >= 0, cand, -jnp.inf)
            top2, pos2 = jax.lax.top_k(inner, width)
            nxt = child.reshape(-1)[pos2]
            idx = jnp.zeros((k,), jnp.int32).at[:width].set(jnp.maximum(nxt, 0))
            logw = jnp.full((k,), -jnp.inf, q.dtype).at[:width].set(jnp.where(nxt >= 0, top2, -jnp.inf))
    return out, mass, target


class Read(NamedTuple):
    """values: (Q, dv) blended values; mass: (Q,) total path weight at the read-out level
    before any renormalisation (1 for soft/sparse when every path reaches it); target: (Q,) the
    path weight on each query's target slot (``targets``; 0 without), before renormalisation:
    the weight on the true path (in a DAG, on every path to that slot; top-k: 0 when the beam
    lost it)."""

    values: jax.Array
    mass: jax.Array
    target: jax.Array


@partial(jax.jit, static_argnames=("mode", "similarity", "k", "query_block"))
def read(levels: tuple[Level, ...], paths, lengths, *, mode: str = "soft", similarity: str = "dot", beta=1.0,
         k: int = 1, query_block: int | None = None, targets=None) -> Read:
    """Read a batch of query paths: paths (Q, L, d) (L = the tree's depth; rows past a path's
    length are ignored), lengths (Q,) int in 1..L. targets: optional (Q,) int, each query's
    true slot at its read-out level as node * B + slot (nested.build.target_slots), for
    Read.target. query_block: queries read together (default 512 soft / sparse, 256 top-k).
    See the module docstring for the modes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if similarity not in SIMILARITY_REGISTRY:
        raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITY_REGISTRY)}")
    if k < 1:
        raise ValueError(f"k = {k}: a beam needs k >= 1")
    if query_block is not None and query_block < 1:
        raise ValueError(f"query_block = {query_block}: read at least one query at a time")
    if paths.ndim != 3 or paths.shape[1] != len(levels):
        raise ValueError(f"paths must be (Q, {len(levels)}, d) for a tree of depth {len(levels)}, got {paths.shape}")
    dtype = jnp.result_type(paths.dtype, levels[0].keys.dtype, jnp.float32)
    paths = paths.astype(dtype)
    beta = jnp.asarray(beta, dtype)
    if mode == "topk":
        one = jax.vmap(lambda q, m, t: _beam_read(levels, q, m, t, k=k, similarity=similarity, beta=beta))
    else:
        norms = tuple(_key_norm(lev, similarity) for lev in levels) if mode == "soft" else None
        one = lambda q, m, t: _dense_block(levels, q, m, t, mode=mode, similarity=similarity, beta=beta,  # noqa: E731
                                           key_norms=norms)
    nq = paths.shape[0]
    # Query blocks: 512 for soft / sparse (against 256: 8.3-8.4 s instead of 10.4-10.5 s at 2^20
    # leaves, the same within 10% at sweep sizes), 256 for the beam (1.13x faster than 1024 at
    # sweep sizes).
    qb = max(1, min(query_block or (256 if mode == "topk" else 512), nq))
    rows = -(-nq // qb) * qb
    padded = jnp.pad(paths, ((0, rows - nq), (0, 0), (0, 0))).reshape(-1, qb, *paths.shape[1:])
    lens = jnp.pad(jnp.asarray(lengths, jnp.int32), (0, rows - nq), constant_values=1).reshape(-1, qb)
    slots = jnp.zeros((nq,), jnp.int32) if targets is None else jnp.asarray(targets, jnp.int32)
    slots = jnp.pad(slots, (0, rows - nq), constant_values=-1).reshape(-1, qb)
    values, mass, target = jax.lax.map(lambda args: one(*args), (padded, lens, slots))
    target = target.reshape(rows)[:nq]
    return Read(values.reshape(rows, -1)[:nq], mass.reshape(rows)[:nq],
                jnp.zeros_like(target) if targets is None else target)


def flat_read(keys, values, valid, queries, *, similarity: str = "dot", beta=1.0):
    """One flat attention memory with padding, for the flat baselines: softmax (inverse
    temperature beta, overflow-safe as every read here) over the valid stored keys (S, D) of
    each query (Q, D), blending values (S, dv) -> (Q, dv). Scores materialised: the baselines
    hold thousands of keys, not millions (kernels.attention.recall streams big memories)."""
    sim = SIMILARITY_REGISTRY[similarity]
    s = sim.scores(sim.prepare(queries[None]), sim.prepare(keys[None]))[0]  # (Q, S)
    return _local_weights("soft", s, valid[None, :], jnp.asarray(beta, s.dtype)) @ values
