"""From a nested Python dictionary to the padded per-level arrays ``kernels.nested`` reads.

Identical sub-dictionaries at the same depth are stored once (hash-consing on their canonical
JSON): the DAG form's shared sub-dictionaries become one node reachable by several paths, and
the cartesian form's copies collapse to one node per level. Symbols become vectors through a
codebook: Gaussian vectors drawn per symbol from a seed (or any ``{symbol: vector}`` mapping,
e.g. GloVe words).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

import numpy as np

from nested import validate


class Slots(NamedTuple):
    """One level as symbols: key and value symbol ids (N, B) int32, -1 where empty / none, and
    child node ids at the next level (N, B), -1 where none."""

    keys: np.ndarray
    values: np.ndarray
    child: np.ndarray


class Tree(NamedTuple):
    """A nested dictionary as levels of symbol ids. key_symbols / value_symbols: the names of
    the ids (keys and values live in separate codebooks: vectors of d and dv coordinates);
    paths: every readable path as (key ids, value id)."""

    levels: tuple[Slots, ...]
    key_symbols: tuple[str, ...]
    value_symbols: tuple[str, ...]
    paths: tuple[tuple[tuple[int, ...], int], ...]

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def size(self) -> int:
        """Stored slots (key, value-or-child) over all levels, after merging shared nodes."""
        return int(sum((lev.keys >= 0).sum() for lev in self.levels))


def compile_tree(tree: dict, *, max_depth: int = validate.MAX_DEPTH) -> Tree:
    """Check ``tree`` (ValueError naming the problem) and lay it out level by level."""
    validate.check(tree, max_depth=max_depth)
    key_ids: dict[str, int] = {}
    value_ids: dict[str, int] = {}
    canon: dict[int, str] = {}

    def canonical(node: dict) -> str:
        if id(node) not in canon:
            canon[id(node)] = json.dumps(node, sort_keys=True, separators=(",", ":"))
        return canon[id(node)]

    def intern(table: dict[str, int], symbol: str) -> int:
        return table.setdefault(symbol, len(table))

    nodes: list[dict] = [tree]
    levels = []
    while nodes:
        width = max(len(n) for n in nodes)
        keys = np.full((len(nodes), width), -1, np.int32)
        values = np.full((len(nodes), width), -1, np.int32)
        child = np.full((len(nodes), width), -1, np.int32)
        nxt: list[dict] = []
        seen: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for j, (key, value) in enumerate(node.items()):
                keys[i, j] = intern(key_ids, key)
                sub = validate._child(value, (key,))
                symbol = value if isinstance(value, str) else (value[0] if isinstance(value, (list, tuple)) else None)
                if symbol is not None:
                    values[i, j] = intern(value_ids, symbol)
                if sub is not None:
                    c = canonical(sub)
                    if c not in seen:
                        seen[c] = len(nxt)
                        nxt.append(sub)
                    child[i, j] = seen[c]
        levels.append(Slots(keys, values, child))
        nodes = nxt
    return Tree(tuple(levels), tuple(key_ids), tuple(value_ids), tuple(_paths(levels)))


def _paths(levels: list[Slots]):
    """Every (key ids along the path, value id) that a read can ask for, depth first."""
    out = []

    def walk(level: int, node: int, prefix: tuple[int, ...]):
        lev = levels[level]
        for j in range(lev.keys.shape[1]):
            if lev.keys[node, j] < 0:
                continue
            path = prefix + (int(lev.keys[node, j]),)
            if lev.values[node, j] >= 0:
                out.append((path, int(lev.values[node, j])))
            if lev.child[node, j] >= 0:
                walk(level + 1, int(lev.child[node, j]), path)

    walk(0, 0, ())
    return out


def gaussian_codebook(symbols: tuple[str, ...], dim: int, seed: int, *, dtype=np.float32) -> np.ndarray:
    """(len(symbols), dim) vectors N(0, 1/dim) per coordinate (unit norm on average), drawn in
    symbol order from ``seed``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((len(symbols), dim)) / np.sqrt(dim)).astype(dtype)


def codebook(symbols: tuple[str, ...], vectors: Mapping[str, Any], dim: int | None = None) -> np.ndarray:
    """Vectors for symbols from a mapping (e.g. word -> GloVe vector); KeyError names a missing one."""
    missing = [s for s in symbols if s not in vectors]
    if missing:
        raise KeyError(f"no vector for symbol {missing[0]!r} ({len(missing)} missing); give every key and value one")
    return np.stack([np.asarray(vectors[s], np.float32) for s in symbols])


def device_levels(tree: Tree, key_vectors: np.ndarray, value_vectors: np.ndarray):
    """The levels as ``kernels.nested.Level`` device arrays at the tree's own sizes: keys
    (N, B, d) and values (N, B, dv) gathered from the codebooks (zero where a slot is empty or
    has no value), with the parents table of every level below the root."""
    import jax.numpy as jnp

    return tuple(type(lev)(*(None if a is None else jnp.asarray(a) for a in lev))
                 for lev in padded_levels(tree, key_vectors, value_vectors))


def padded_levels(tree: Tree, key_vectors: np.ndarray, value_vectors: np.ndarray,
                  nodes: tuple[int, ...] | None = None, width: int | None = None, gather: bool = True) -> tuple:
    """The levels of ``tree`` as NumPy ``kernels.nested.Level`` fields, padded to ``nodes[l]``
    nodes of ``width`` slots each (None: the level's own; padding slots are masked out), so
    trees of one shape class (e.g. every seed of a sweep cell) share one compiled read. Target
    slots (target_slots) must then be renumbered with ``width``: see ``repad_slots``. gather:
    build each level's parents table (parent_slots; its width is the largest number of parents
    of a node, which differs from tree to tree where identical sub-dictionaries are merged, so
    padded reads that must share a program go by scatter: gather=False)."""
    from kernels.nested import Level

    out, above = [], None
    for l, lev in enumerate(tree.levels):
        n, b = lev.keys.shape
        rows, cols = n if nodes is None else nodes[l], b if width is None else width
        if n > rows or b > cols:
            raise ValueError(f"level {l} has {n} nodes of {b} slots, more than the {rows} x {cols} to pad to")
        padded = Slots(*(np.full((rows, cols), -1, np.int32) for _ in range(3)))
        for mine, theirs in zip(padded, lev):
            mine[:n, :b] = theirs
        kv = np.where((padded.keys >= 0)[..., None], key_vectors[np.maximum(padded.keys, 0)], 0.0)
        vv = np.where((padded.values >= 0)[..., None], value_vectors[np.maximum(padded.values, 0)], 0.0)
        parents = parent_slots(above, rows) if gather and l > 0 else None
        out.append(Level(kv.astype(key_vectors.dtype), padded.keys >= 0, padded.child, vv.astype(value_vectors.dtype),
                         parents))
        above = padded
    return tuple(out)


def parent_slots(above: Slots, nodes: int) -> np.ndarray:
    """(nodes, P) int32: for each node of a level, the flat slots (node * B + slot) of the level
    above whose child it is, -1 padded; P is the largest number of parents."""
    flat = above.child.reshape(-1)
    slots = np.flatnonzero(flat >= 0)
    order = np.argsort(flat[slots], kind="stable")
    children, slots = flat[slots][order], slots[order]
    counts = np.bincount(children, minlength=nodes)
    out = np.full((nodes, max(int(counts.max(initial=0)), 1)), -1, np.int32)
    rank = np.arange(len(children)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[children, rank] = slots
    return out


def query_paths(tree: Tree, key_vectors: np.ndarray, which=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Path queries for tree.paths (or the indices ``which`` of them): (Q, depth, d) key
    vectors (zero past each path's length), lengths (Q,), and the value id each should read."""
    chosen = tree.paths if which is None else [tree.paths[i] for i in which]
    d = key_vectors.shape[1]
    out = np.zeros((len(chosen), tree.depth, d), key_vectors.dtype)
    lengths = np.zeros(len(chosen), np.int32)
    targets = np.zeros(len(chosen), np.int32)
    for i, (keys, value) in enumerate(chosen):
        out[i, :len(keys)] = key_vectors[list(keys)]
        lengths[i] = len(keys)
        targets[i] = value
    return out, lengths, targets


def target_slots(tree: Tree, which=None) -> np.ndarray:
    """(Q,) int32: the slot each path of tree.paths (or of ``which``) ends in, at the level of
    its last key, as node * B + slot (B: that level's width): what ``kernels.nested.read``'s
    ``targets`` names."""
    chosen = tree.paths if which is None else [tree.paths[i] for i in which]
    out = np.zeros(len(chosen), np.int32)
    for i, (keys, _) in enumerate(chosen):
        *_, (lev, node, slot) = _walk(tree, keys)
        out[i] = node * lev.keys.shape[1] + slot
    return out


def _walk(tree: Tree, keys):
    """(level's Slots, node, slot) of each key of one path, from the root down."""
    node = 0
    for level, key in enumerate(keys):
        lev = tree.levels[level]
        slot = int(np.flatnonzero(lev.keys[node] == key)[0])
        yield lev, node, slot
        node = int(lev.child[node, slot])


def path_competitors(tree: Tree, which=None) -> np.ndarray:
    """(Q, depth) int32 for tree.paths (or ``which``): at each level of a path, how many other
    slots of its node compete with the true one for a selective read (nested.theory): above
    the path's last key, the siblings that hold a nested dictionary (a read descends only
    through those); at its last key, every other slot of the node; -1 past the path's end."""
    chosen = tree.paths if which is None else [tree.paths[i] for i in which]
    out = np.full((len(chosen), tree.depth), -1, np.int32)
    for i, (keys, _) in enumerate(chosen):
        for level, (lev, node, _) in enumerate(_walk(tree, keys)):
            valid = lev.keys[node] >= 0
            last = level == len(keys) - 1
            out[i, level] = int(valid.sum() if last else (valid & (lev.child[node] >= 0)).sum()) - 1
    return out


def repad_slots(tree: Tree, slots: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Target slots (target_slots) renumbered for levels padded to ``width`` slots per node."""
    widths = np.array([lev.keys.shape[1] for lev in tree.levels])[np.asarray(lengths) - 1]
    return (slots // widths * width + slots % widths).astype(np.int32)
