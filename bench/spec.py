"""What a sweep runs: a frozen, self-validating spec, its presets, and the cells it expands to."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

KERNELS = ("pinv", "hebbian", "ridge", "delta")
PATTERNS = ("gaussian", "sphere", "binary", "glove")
# GloVe 6B 50-d: pairs are distinct words among the most frequent GLOVE_WORDS.
GLOVE_DIM = 50
GLOVE_WORDS = 100_000
DTYPES = ("float32", "float64")
METHODS = ("auto", "gram64", "qr32")
# Knobs of each memory: the spec field that sweeps it. Other knobs are not columns of its rows.
KNOBS = {"pinv": (), "hebbian": (), "ridge": ("lam",), "delta": ("eta", "passes")}


class SpecError(ValueError):
    """A spec value that cannot run. The message names the field, the value and the fix."""


def _powers(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(lo, hi + 1))


PRESETS: dict[str, dict[str, Any]] = {
    # A smoke test: every memory on a tiny grid, seconds on a laptop.
    "quick": dict(kernels=KERNELS, d=(16, 32), n=(4, 16, 32, 64, 256), noise=(0.0,), seeds=2),
    # The classic notebook grid, every memory, three seeds (add --noise 0,0.1 to see the
    # pseudoinverse's error peak at n = d).
    "default": dict(kernels=KERNELS, d=_powers(6, 10), n=_powers(2, 15), noise=(0.0,), seeds=3),
    # Sized for a GPU workstation.
    "full": dict(kernels=KERNELS, d=_powers(6, 12), n=_powers(2, 20), noise=(0.0, 0.05, 0.1, 0.3), seeds=8,
                 lam=(0.01, 1.0, 100.0), passes=(1, 4)),
}


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: every kernel x its knobs x d x n x noise, each cell run over ``seeds`` seeds.

    dv: value dimension (None: equal to d). patterns: key/value distributions, a sweep axis
    ("glove": distinct words of GloVe 6B 50-d, d <= 50, smaller d by random projection). lam: ridge lambdas. eta: delta-rule steps in
    units of 1/||k||^2. passes: delta-rule epochs. acc_queries: most queries scored for
    nearest-neighbour accuracy. method: least-squares method for pinv and ridge.
    """

    kernels: tuple[str, ...] = KERNELS
    d: tuple[int, ...] = _powers(6, 10)
    n: tuple[int, ...] = _powers(2, 15)
    noise: tuple[float, ...] = (0.0,)
    seeds: int = 3
    dv: int | None = None
    dtype: str = "float32"
    patterns: tuple[str, ...] = ("gaussian",)
    lam: tuple[float, ...] = (1.0,)
    eta: tuple[float, ...] = (1.0,)
    passes: tuple[int, ...] = (1,)
    acc_queries: int = 1024
    method: str = "auto"
    preset: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        for name in ("kernels", "d", "n", "noise", "lam", "eta", "passes", "patterns"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = (value,)
            value = tuple(value)
            if not value:
                raise SpecError(f"{name}: empty; give at least one value")
            object.__setattr__(self, name, value)
        for name in self.kernels:
            if name not in KERNELS:
                raise SpecError(f"kernels: unknown kernel {name!r}; choose from {', '.join(KERNELS)}")
        for name in ("d", "n", "passes"):
            for v in getattr(self, name):
                if not _positive_int(v):
                    raise SpecError(f"{name}: {v!r} is not a positive integer; give whole numbers >= 1")
        _check_positive_int("seeds", self.seeds)
        _check_positive_int("acc_queries", self.acc_queries)
        if self.dv is not None:
            _check_positive_int("dv", self.dv)
        for v in self.noise:
            if not _finite(v) or v < 0:
                raise SpecError(f"noise: {v!r} is not allowed; give finite relative noise levels >= 0")
        for v in self.lam:
            if not _finite(v) or v <= 0:
                raise SpecError(f"lam: {v!r} is not allowed; ridge needs finite lambdas > 0 (pinv is lambda = 0)")
        for v in self.eta:
            if not _finite(v) or not 0 < v < 2:
                raise SpecError(f"eta: {v!r} is not allowed; the normalised delta rule is stable for 0 < eta < 2")
        for v in self.patterns:
            if v not in PATTERNS:
                raise SpecError(f"patterns: unknown distribution {v!r}; choose from {', '.join(PATTERNS)}")
        if "glove" in self.patterns:
            too_big = [d for d in self.d if d > GLOVE_DIM] + ([self.dv] if self.dv and self.dv > GLOVE_DIM else [])
            if too_big:
                raise SpecError(f"d: {too_big[0]} is more than the {GLOVE_DIM} dimensions of the GloVe vectors; "
                                f"use --d <= {GLOVE_DIM} with --patterns glove (smaller d are random projections)")
            if max(self.n) > GLOVE_WORDS // 2:
                raise SpecError(f"n: {max(self.n)} pairs need {2 * max(self.n)} distinct words; --patterns glove "
                                f"draws from the {GLOVE_WORDS} most frequent, so use n <= {GLOVE_WORDS // 2}")
        for name, allowed in (("dtype", DTYPES), ("method", METHODS)):
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name}: unknown value {getattr(self, name)!r}; choose from {', '.join(allowed)}")
        for name in ("kernels", "d", "n", "noise", "lam", "eta", "passes", "patterns"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise SpecError(f"{name}: {list(values)} repeats a value; list each value once")
        object.__setattr__(self, "d", tuple(int(v) for v in self.d))
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        object.__setattr__(self, "passes", tuple(int(v) for v in self.passes))
        object.__setattr__(self, "noise", tuple(float(v) for v in self.noise))
        object.__setattr__(self, "lam", tuple(float(v) for v in self.lam))
        object.__setattr__(self, "eta", tuple(float(v) for v in self.eta))

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

    def cells(self) -> list["Cell"]:
        """Every cell, grouped so each compiled family (kernel, d) runs its cells together."""
        out = []
        for kernel in self.kernels:
            knob_grid = [dict()]
            for knob in KNOBS[kernel]:
                knob_grid = [{**g, knob: v} for g in knob_grid for v in getattr(self, knob)]
            for patterns in self.patterns:
                for d in self.d:
                    for knobs in knob_grid:
                        for noise in self.noise:
                            for n in self.n:
                                out.append(Cell(kernel=kernel, d=d, n=n, dv=self.dv or d, noise=noise,
                                                patterns=patterns, dtype=self.dtype, **knobs))
        return out


@dataclass(frozen=True)
class Cell:
    """One point of the grid; every seed of it runs in one batched call."""

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

    @property
    def id(self) -> str:
        """A stable name for the cell's part file: the same cell has the same id in every run."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        knobs = "".join(f" {k}={getattr(self, k)}" for k in KNOBS[self.kernel])
        return f"{self.kernel}{knobs} d={self.d} n={self.n} noise={self.noise}"


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_positive_int(name: str, v: Any) -> None:
    if not _positive_int(v):
        raise SpecError(f"{name}: {v!r} is not a positive integer; give a whole number >= 1")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
