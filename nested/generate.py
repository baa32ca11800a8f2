"""Nested dictionaries of five forms, from a spec and a seed: plain, JSON-serialisable Python.

Symbols are strings: keys ``k<i>`` (``n_<i>`` for the DAG form's nested keys), leaf values
``v<i>``, qualifiers ``q<i>``; a codebook (nested.build) maps them to vectors.

- cartesian: every parent holds a copy of the same inner dictionary (independent categorical
  variables: a leaf's value depends on its own level's key only, the composite key factorises);
- independent: fresh keys everywhere, branches of varying depth (a child above the last level
  is a leaf with probability 1/depth; the first child of a node always nests, so the tree
  reaches the full depth);
- collision: as independent, but a ``collision`` fraction of each node's keys come from one
  small set per level shared by every parent, with different values under each (the inner key
  alone is ambiguous; only the path disambiguates);
- random: a ``collision`` fraction of keys, at any depth and position, come from one small pool
  shared by the whole tree;
- dag: values are ``[qualifier, child or None]``; a ``sharing`` fraction of nested values are
  copies of sub-dictionaries already used at that depth by other parents (a node reachable by
  several paths; nested.build merges identical sub-dictionaries, so it is stored once); keys
  holding nested values match ``n_``, and a level with more than 4 keys holds a nested value
  (nested.validate checks both rules).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

from nested import validate

FORMS = ("cartesian", "independent", "collision", "random", "dag")


@dataclass(frozen=True)
class TreeSpec:
    """form: one of FORMS. depth: levels of keys on the longest path. branching: keys per node
    (with vary_branching, drawn uniformly from 1..branching per node; the first level keeps
    branching). collision: fraction of coinciding keys (collision, random). sharing: fraction
    of nested values shared (dag)."""

    form: str
    depth: int = 3
    branching: int = 4
    vary_branching: bool = False
    collision: float = 1.0
    sharing: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form {self.form!r}: use one of {', '.join(FORMS)}")
        if not 1 <= self.depth <= validate.MAX_DEPTH:
            raise ValueError(f"depth = {self.depth}: use 1..{validate.MAX_DEPTH}")
        if not 1 <= self.branching <= 4096:
            raise ValueError(f"branching = {self.branching}: use 1..4096")
        for name in ("collision", "sharing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value}: use a fraction in [0, 1]")
        if self.branching ** min(self.depth, 8) > 2**24:
            raise ValueError(f"branching^depth = {self.branching}^{self.depth} is more than 2^24 leaves; use a "
                             "smaller tree")


def generate(spec: TreeSpec) -> dict:
    """The nested dictionary of ``spec`` (the same for the same spec, on every machine)."""
    return _Generator(spec).tree()


class _Generator:
    def __init__(self, spec: TreeSpec):
        self.s = spec
        self.rng = random.Random(f"{spec.form}/{spec.seed}")
        self.counters = {"k": 0, "v": 0, "q": 0, "n_": 0}
        self.pool: dict[int, list[dict]] = {}  # dag: sub-dictionaries used at each depth

    def fresh(self, prefix: str) -> str:
        self.counters[prefix] += 1
        return f"{prefix}{self.counters[prefix] - 1}"

    def width(self, level: int) -> int:
        if self.s.vary_branching and level > 0:
            return self.rng.randint(1, self.s.branching)
        return self.s.branching

    def tree(self) -> dict:
        form = self.s.form
        if form == "cartesian":
            return self.cartesian(0)
        if form == "dag":
            return self.dag(0)
        return self.nested(0)

    def cartesian(self, level: int) -> dict:
        b = self.s.branching
        if level == self.s.depth - 1:
            return {f"k{level}_{j}": f"v{level}_{j}" for j in range(b)}
        inner = self.cartesian(level + 1)
        return {f"k{level}_{j}": copy.deepcopy(inner) for j in range(b)}

    def keys(self, level: int, width: int) -> list[str]:
        """width distinct keys for one node."""
        form, c = self.s.form, self.s.collision
        shared_pool = {"collision": [f"c{level}_{j}" for j in range(self.s.branching)],
                       "random": [f"r{j}" for j in range(self.s.branching)]}.get(form, [])
        out: list[str] = []
        for _ in range(width):
            free = [k for k in shared_pool if k not in out]
            out.append(self.rng.choice(free) if free and self.rng.random() < c else self.fresh("k"))
        return out

    def nested(self, level: int) -> dict:
        node = {}
        last = level == self.s.depth - 1
        for i, key in enumerate(self.keys(level, self.width(level))):
            leaf = last or (i > 0 and self.rng.random() < 1 / self.s.depth)
            node[key] = self.fresh("v") if leaf else self.nested(level + 1)
        return node

    def dag(self, level: int) -> dict:
        last = level == self.s.depth - 1
        width = min(self.width(level), validate.RULE_WIDE) if last else self.width(level)
        node = {}
        for i in range(width):
            nest = not last and (i == 0 or self.rng.random() < 0.5)
            if not nest:
                node[self.fresh("k")] = [self.fresh("q"), None]
                continue
            pool = self.pool.setdefault(level + 1, [])
            if pool and self.rng.random() < self.s.sharing:
                child = copy.deepcopy(self.rng.choice(pool))
            else:
                child = self.dag(level + 1)
                pool.append(child)
            node[self.fresh("n_")] = [self.fresh("q"), child]
        return node
