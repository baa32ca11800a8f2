"""What a sweep runs: a frozen, self-validating spec, its presets, and the cells it expands to."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from kernels.names import (DTYPES, KERNELS, KNOBS, LEAST_SQUARES, PATTERNS, SEPARATION_KNOBS, SEPARATIONS,
                           SIMILARITIES, memory_label)
from kernels.names import MEMORIES as _MEMORIES
from kernels.names import METHODS as _SOLVE_METHODS

# Pairs are counted in int32 on the device: n stays below this, and so does every other size.
MAX_PAIRS = 2**31
# Rows a run may have (cells x seeds): beyond this the run table alone outgrows a workstation.
MAX_ROWS = 2**22
# GloVe 6B 50-d: pairs are distinct words among the most frequent GLOVE_WORDS.
GLOVE_DIM = 50
GLOVE_WORDS = 100_000
METHODS = ("auto", *_SOLVE_METHODS)
# Knobs of each memory: the spec fields that sweep it. Other knobs are not columns of its rows.
KNOBS_OF = {memory: m.knobs for memory, m in _MEMORIES.items()}
# Axes of the spec that are tuples (sweep axes): the grid's own, then every memory knob, then
# the nested-dictionary sweep's (``nested``: bench.nested_sweep; it also reads d, similarity,
# beta, topk as its beam width k, seeds, acc_queries, dtype).
NESTED_AXES = ("form", "depth", "branching", "vary_branching", "collision", "sharing", "mode", "composition")
AXES = ("kernels", "d", "n", "noise", "patterns", *KNOBS, "mask", *NESTED_AXES)
# Scalar settings of the spec that the command line sets (with the axes).
SCALARS = ("seeds", "dv", "dtype", "acc_queries", "method", "capacity", "threshold", "max_n", "nested")
_FORMS = ("cartesian", "independent", "collision", "random", "dag")  # nested.generate.FORMS (checked in a test)
_READERS = ("soft", "sparse", "topk", "flat_attention", "flat_pinv", "stacked")  # bench.nested_sweep.READERS
_COMPOSITIONS = ("sum", "concat", "hadamard", "circular")  # nested.flat.COMPOSITIONS


class SpecError(ValueError):
    """A spec value that cannot run. The message names the field, the value and the fix."""


def _powers(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(lo, hi + 1))


PRESETS: dict[str, dict[str, Any]] = {
    # A smoke test: every memory on a tiny grid, seconds on a laptop.
    "quick": dict(kernels=KERNELS, d=(16, 32), n=(4, 16, 32, 64, 256), noise=(0.0,), seeds=2,
                  similarity=("dot", "scaled_dot"), separation=("softmax", "topk"), topk=(4,)),
    # The classic notebook grid, every memory, three seeds (add --noise 0,0.1 to see the
    # pseudoinverse's error peak at n = d); attention with transformer-style settings.
    "default": dict(kernels=KERNELS, d=_powers(6, 10), n=_powers(2, 15), noise=(0.0,), seeds=3,
                    similarity=("dot", "scaled_dot"), separation=("softmax", "topk"), beta=(1.0,), topk=(8,)),
    # Sized for a GPU workstation.
    "full": dict(kernels=KERNELS, d=_powers(6, 12), n=_powers(2, 20), noise=(0.0, 0.05, 0.1, 0.3), seeds=8,
                 lam=(0.01, 1.0, 100.0), passes=(1, 4), similarity=SIMILARITIES, separation=SEPARATIONS,
                 beta=(1.0, 4.0, 16.0), topk=(1, 8, 64), degree=(2.0, 3.0, 5.0), heads=(1, 4)),
    # Nested dictionaries read level by level against flat baselines (run_all.py --nested).
    "nested": dict(nested=True, d=(16, 64), seeds=3, similarity=("dot",), beta=(2.0, 8.0), topk=(1, 4)),
}


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: every kernel x its knobs x d x n x noise, each cell run over ``seeds`` seeds.

    dv: value dimension (None: equal to d). patterns: key/value distributions, a sweep axis
    ("glove": distinct words of GloVe 6B 50-d, d <= 50, smaller d by random projection).
    lam: ridge lambdas. eta: delta-rule steps in units of 1/||k||^2. passes: delta-rule
    epochs. Attention: similarity x separation, beta (inverse temperature of softmax and
    topk), topk (k of topk), degree (of polynomial), heads, steps (> 1: auto-association, the
    values are the keys). mask: fractions of query coordinates zeroed (every memory). acc_queries: how many
    stored keys are queried (attention: every metric is over them; matrix memories: the
    nearest-neighbour accuracy). method: least-squares method for pinv and ridge.
    capacity: instead of the n grid, search each (setting, d) for the largest n whose mean
    accuracy stays >= threshold, up to max_n.
    """

    kernels: tuple[str, ...] = KERNELS
    d: tuple[int, ...] = _powers(6, 10)
    n: tuple[int, ...] = _powers(2, 15)
    noise: tuple[float, ...] = (0.0,)
    seeds: int = 3
    dv: int | None = None
    dtype: str = "float32"
    patterns: tuple[str, ...] = ("gaussian",)
    lam: tuple[float, ...] = KNOBS["lam"].default
    eta: tuple[float, ...] = KNOBS["eta"].default
    passes: tuple[int, ...] = KNOBS["passes"].default
    similarity: tuple[str, ...] = KNOBS["similarity"].default
    separation: tuple[str, ...] = KNOBS["separation"].default
    beta: tuple[float, ...] = KNOBS["beta"].default
    topk: tuple[int, ...] = KNOBS["topk"].default
    degree: tuple[float, ...] = KNOBS["degree"].default
    heads: tuple[int, ...] = KNOBS["heads"].default
    steps: tuple[int, ...] = KNOBS["steps"].default
    mask: tuple[float, ...] = (0.0,)
    acc_queries: int = 1024
    method: str = "auto"
    capacity: bool = False
    threshold: float = 0.99
    max_n: int = 2**16
    nested: bool = False
    form: tuple[str, ...] = _FORMS
    depth: tuple[int, ...] = (2, 3, 4)
    branching: tuple[int, ...] = (4, 8)
    vary_branching: tuple[bool, ...] = (False,)
    collision: tuple[float, ...] = (1.0,)
    sharing: tuple[float, ...] = (0.5,)
    mode: tuple[str, ...] = _READERS
    composition: tuple[str, ...] = _COMPOSITIONS
    preset: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        for name in AXES:
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = (value,)
            value = tuple(value)
            if not value:
                raise SpecError(f"{name}: empty; give at least one value")
            object.__setattr__(self, name, value)
        for name, allowed in (("kernels", KERNELS), ("similarity", SIMILARITIES), ("separation", SEPARATIONS),
                              ("form", _FORMS), ("mode", _READERS), ("composition", _COMPOSITIONS)):
            for v in getattr(self, name):
                if v not in allowed:
                    raise SpecError(f"{name}: unknown {name.rstrip('s')} {v!r}; choose from {', '.join(allowed)}")
        for name in ("d", "n", *_knobs_of_kind(int), "depth", "branching"):
            for v in getattr(self, name):
                if not _positive_int(v):
                    raise SpecError(f"{name}: {v!r} is not a positive integer; give whole numbers >= 1")
        _check_positive_int("seeds", self.seeds)
        _check_positive_int("acc_queries", self.acc_queries)
        _check_positive_int("max_n", self.max_n)
        for name, values in (("n", self.n), ("max_n", (self.max_n,))):
            for v in values:
                if v >= MAX_PAIRS:
                    raise SpecError(f"{name}: {v} is too many pairs; pairs are counted in int32, use {name} < 2^31")
        if self.dv is not None:
            _check_positive_int("dv", self.dv)
        sizes = [(name, v) for name in ("d", *_knobs_of_kind(int)) for v in getattr(self, name)]
        sizes += [(name, getattr(self, name)) for name in ("dv", "seeds", "acc_queries") if getattr(self, name)]
        for name, v in sizes:
            if v >= MAX_PAIRS:
                raise SpecError(f"{name}: {v} is more than any device can index (int32); use {name} < 2^31")
        for v in self.noise:
            if not _finite(v) or v < 0:
                raise SpecError(f"noise: {v!r} is not allowed; give finite relative noise levels >= 0")
        for v in self.lam:
            if not _finite(v) or v <= 0:
                raise SpecError(f"lam: {v!r} is not allowed; ridge needs finite lambdas > 0 (pinv is lambda = 0)")
        for v in self.eta:
            if not _finite(v) or not 0 < v < 2:
                raise SpecError(f"eta: {v!r} is not allowed; the normalised delta rule is stable for 0 < eta < 2")
        for v in self.beta:
            if not _finite(v) or v <= 0:
                raise SpecError(f"beta: {v!r} is not allowed; the inverse temperature must be finite and > 0")
        for v in self.degree:
            if not _finite(v) or v <= 0:
                raise SpecError(f"degree: {v!r} is not allowed; the polynomial degree must be finite and > 0")
        for v in self.depth:
            if v > 8:
                raise SpecError(f"depth: {v} is more levels than a nested sweep reads (8); use --depth 1..8")
        for v in self.branching:
            if v > 4096:
                raise SpecError(f"branching: {v} keys per node is more than 4096; use a smaller --branching")
        for v in self.collision:
            if not _finite(v) or not 0 <= v <= 1:
                raise SpecError(f"collision: {v!r} is not allowed; give fractions of coinciding keys in [0, 1]")
        for v in self.sharing:
            if not _finite(v) or not 0 <= v <= 1:
                raise SpecError(f"sharing: {v!r} is not allowed; give fractions of shared sub-dictionaries in [0, 1]")
        for v in self.vary_branching:
            if not isinstance(v, bool):
                raise SpecError(f"vary_branching: {v!r} is not true or false")
        if not isinstance(self.nested, bool):
            raise SpecError(f"nested: {self.nested!r} is not true or false")
        for v in self.mask:
            if not _finite(v) or not 0 <= v < 1:
                raise SpecError(f"mask: {v!r} is not allowed; give the fraction of query coordinates zeroed, "
                                "in [0, 1)")
        if not _finite(self.threshold) or not 0 < self.threshold <= 1:
            raise SpecError(f"threshold: {self.threshold!r} is not allowed; give an accuracy in (0, 1]")
        if "attention" in self.kernels:
            dims = [("d", d) for d in self.d] + ([("dv", self.dv)] if self.dv else [])
            for h in self.heads:
                for name, dim in dims:
                    if dim % h:
                        raise SpecError(f"heads: {h} does not divide {name} = {dim}; use head counts that divide "
                                        f"every d{' and dv' if self.dv else ''}")
            if max(self.steps) > 1 and self.dv is not None and any(self.dv != d for d in self.d):
                raise SpecError(f"steps: {max(self.steps)} iterates auto-association (values are the keys), "
                                f"which needs dv == d; drop --dv or use --steps 1")
        for v in self.patterns:
            if v not in PATTERNS:
                raise SpecError(f"patterns: unknown distribution {v!r}; choose from {', '.join(PATTERNS)}")
        if "glove" in self.patterns:
            too_big = [d for d in self.d if d > GLOVE_DIM] + ([self.dv] if self.dv and self.dv > GLOVE_DIM else [])
            if too_big:
                raise SpecError(f"d: {too_big[0]} is more than the {GLOVE_DIM} dimensions of the GloVe vectors; "
                                f"use --d <= {GLOVE_DIM} with --patterns glove (smaller d are random projections)")
            largest, flag = (self.max_n, "max_n") if self.capacity else (max(self.n), "n")
            if largest > GLOVE_WORDS // 2:
                raise SpecError(f"{flag}: {largest} pairs need {2 * largest} distinct words; --patterns glove "
                                f"draws from the {GLOVE_WORDS} most frequent, so use {flag} <= {GLOVE_WORDS // 2}")
        for name, allowed in (("dtype", DTYPES), ("method", METHODS)):
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name}: unknown value {getattr(self, name)!r}; choose from {', '.join(allowed)}")
        for name in AXES:
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise SpecError(f"{name}: {list(values)} repeats a value; list each value once")
        for name in ("d", "n", *_knobs_of_kind(int), "depth", "branching"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "vary_branching", tuple(bool(v) for v in self.vary_branching))
        for name in ("noise", *_knobs_of_kind(float), "mask", "collision", "sharing"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.nested:
            from bench import nested_sweep

            nested_sweep.check(self)
        rows = self.row_count()
        if rows > MAX_ROWS:
            raise SpecError(f"seeds: {self.seeds} seeds x {rows // self.seeds} cells = {rows} rows, more than "
                            f"{MAX_ROWS} a run can hold; use fewer --seeds or a smaller grid (or split the sweep)")

    def row_count(self) -> int:
        """Rows the run will have (one per cell x seed; a capacity search counts one probe per
        setting), without expanding the grid."""
        if self.nested:
            from bench import nested_sweep

            return len(nested_sweep.cells(self)) * self.seeds
        per_grid_point = len(self.patterns) * len(self.d) * len(self.noise) * len(self.mask)
        settings = 0
        for kernel in self.kernels:
            knobs = KNOBS_OF[kernel]
            count = math.prod(len(getattr(self, k)) for k in knobs if k != "separation" and k not in SEPARATION_KNOBS)
            if "separation" in knobs:
                count *= sum(math.prod(len(getattr(self, k)) for k, seps in SEPARATION_KNOBS.items() if sep in seps)
                             for sep in self.separation)
            settings += count
        return settings * per_grid_point * (1 if self.capacity else len(self.n)) * self.seeds

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> "SweepSpec":
        if preset not in PRESETS:
            raise SpecError(f"preset: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SpecError(f"spec: unknown fields {sorted(unknown)}; this version knows {sorted(names)}")
        return cls(**data)

    def settings(self, auto_method: str = "auto") -> list["Cell"]:
        """Every (memory setting, patterns, d, noise, mask) with n = 0: the searches of a
        capacity run, and the rows of the grid before n is chosen. auto_method: what method
        "auto" means on this backend (the sweep passes it, so a cell's id names the method
        that runs)."""
        method = auto_method if self.method == "auto" else self.method
        out = []
        for kernel in self.kernels:
            for patterns in self.patterns:
                for d in self.d:
                    for knobs in self._knob_grid(kernel):
                        for noise in self.noise:
                            for mask in self.mask:
                                steps = knobs.get("steps", 1)
                                dv = d if steps > 1 else (self.dv or d)
                                out.append(Cell(kernel=kernel, d=d, n=0, dv=dv, noise=noise, patterns=patterns,
                                                dtype=self.dtype, mask=mask, queries=self.acc_queries,
                                                method=method if kernel in LEAST_SQUARES else None, **knobs))
        return out

    def cells(self, auto_method: str = "auto") -> list["Cell"]:
        """Every cell of the grid, grouped so each compiled family runs its cells together."""
        return [dataclasses.replace(s, n=n) for s in self.settings(auto_method) for n in self.n]

    def _knob_grid(self, kernel: str) -> list[dict[str, Any]]:
        grid: list[dict[str, Any]] = [dict()]
        for knob in KNOBS_OF[kernel]:
            expanded = []
            for g in grid:
                applies = knob not in SEPARATION_KNOBS or g["separation"] in SEPARATION_KNOBS[knob]
                expanded += [{**g, knob: v} for v in getattr(self, knob)] if applies else [{**g, knob: None}]
            grid = expanded
        return grid


@dataclass(frozen=True)
class Cell:
    """One point of the grid; every seed of it runs in one batched call. Knobs a memory does
    not read are None."""

    kernel: str
    d: int
    n: int
    dv: int
    noise: float
    patterns: str
    dtype: str
    lam: float | None = None
    eta: float | None = None
    passes: int | None = None
    similarity: str | None = None
    separation: str | None = None
    beta: float | None = None
    topk: int | None = None
    degree: float | None = None
    heads: int | None = None
    steps: int | None = None
    mask: float | None = None
    queries: int = 1024
    method: str | None = None

    @property
    def id(self) -> str:
        """A stable name for the cell's part file: a hash of every setting that decides its
        numbers, so the same cell has the same id in every run."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def legacy_id(self) -> str:
        """The id of runs written before ids hashed ``queries`` and ``method`` (manifests
        without ``cell_ids``): resuming such a run finds its parts under these names."""
        fields = dataclasses.asdict(self)
        del fields["queries"], fields["method"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def knob_text(self) -> str:
        """The memory and the knobs it reads, e.g. 'attention scaled_dot topk beta=1 topk=8'."""
        return memory_label(self.kernel, dataclasses.asdict(self))

    def setting_label(self) -> str:
        """The cell without its n: what a capacity search varies n over."""
        corruption = f" mask={self.mask:g}" if self.mask else ""
        return f"{self.knob_text()} d={self.d} noise={self.noise}{corruption}"

    def label(self) -> str:
        return f"{self.setting_label()} n={self.n}"


def _knobs_of_kind(kind: type) -> tuple[str, ...]:
    return tuple(k.name for k in KNOBS.values() if k.kind is kind)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_positive_int(name: str, v: Any) -> None:
    if not _positive_int(v):
        raise SpecError(f"{name}: {v!r} is not a positive integer; give a whole number >= 1")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
