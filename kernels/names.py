"""The names of the suite, written once: memories, similarities, separations, pattern
distributions, methods and the knobs each reads, with their types and defaults.

Plain Python, no JAX: the spec, the command line, the store's schema, the plots, the report
and the sweep read these lists (validating a spec or printing --help starts no JAX), and the
kernels' registries (``kernels.matrix.RULES``, ``kernels.attention.SEPARATION_REGISTRY`` and
``SIMILARITY_REGISTRY``) implement exactly these names; importing them checks that they do.

Adding a separation: one ``SEPARATIONS`` entry here (its name and the knobs it reads) and its
implementation in ``kernels/attention.py``; the spec, CLI, schema, plots and report follow.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple


class Knob(NamedTuple):
    """A setting of some memories, swept as an axis: spec field, ``--name`` flag and result
    column share the name. kind: int, float or str; default: the spec's default values."""

    name: str
    kind: type
    default: tuple
    help: str


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("lam", float, (1.0,), "ridge lambdas (default 1)"),
    Knob("eta", float, (1.0,), "delta-rule steps in units of 1/||k||^2 (default 1)"),
    Knob("passes", int, (1,), "delta-rule passes over the data (default 1)"),
    Knob("similarity", str, ("dot",), "scores, comma-separated"),
    Knob("separation", str, ("softmax",), "score to weight maps"),
    Knob("beta", float, (1.0,), "inverse temperatures of softmax and topk (default 1)"),
    Knob("topk", int, (8,), "k of topk separation (default 8); cells with k > n are skipped"),
    Knob("degree", float, (3.0,), "degree of polynomial separation (default 3)"),
    Knob("heads", int, (1,), "attention heads, each dividing d (default 1)"),
    Knob("steps", int, (1,), "updates per recall (default 1; > 1 iterates auto-association: the values are the keys)"),
)}


class Memory(NamedTuple):
    """knobs: the KNOBS it reads, in the order of its label; least_squares: solves K W ~ V
    (so --method, the float64 path and the fallback apply)."""

    knobs: tuple[str, ...] = ()
    least_squares: bool = False


MEMORIES: dict[str, Memory] = {
    "pinv": Memory(least_squares=True),
    "hebbian": Memory(),
    "ridge": Memory(("lam",), least_squares=True),
    "delta": Memory(("eta", "passes")),
    "attention": Memory(("similarity", "separation", "beta", "topk", "degree", "heads", "steps")),
}
KERNELS = tuple(MEMORIES)
LEAST_SQUARES = tuple(m for m, memory in MEMORIES.items() if memory.least_squares)
SIMILARITIES = ("dot", "scaled_dot", "cosine", "euclidean", "manhattan")
# Each separation and the knobs it reads (other separation knobs are None in its rows).
SEPARATIONS: dict[str, tuple[str, ...]] = {
    "softmax": ("beta",),
    "topk": ("beta", "topk"),
    "max": (),
    "polynomial": ("degree",),
    "identity": (),
}
# Knobs that only some separations read, and which.
SEPARATION_KNOBS = {knob: tuple(s for s, reads in SEPARATIONS.items() if knob in reads)
                    for knob in dict.fromkeys(k for reads in SEPARATIONS.values() for k in reads)}
# Key/value distributions; "glove" draws distinct GloVe words (a table stream in kernels).
DISTRIBUTIONS = ("gaussian", "sphere", "binary")
PATTERNS = (*DISTRIBUTIONS, "glove")
DTYPES = ("float32", "float64")
METHODS = ("gram64", "qr32")


def default(knob: str) -> Any:
    """The value a kernel uses for a knob a cell does not read (its first default)."""
    return KNOBS[knob].default[0]


def reads(memory: str, knob: str, separation: str | None = None) -> bool:
    """Whether a memory (with this separation, for attention) reads the knob."""
    if knob not in MEMORIES[memory].knobs:
        return False
    return knob not in SEPARATION_KNOBS or separation in SEPARATION_KNOBS[knob]


def memory_label(kernel: str, values: Mapping[str, Any]) -> str:
    """The memory and the knobs it reads, e.g. 'attention scaled_dot topk beta=1 topk=8'.
    values: knob -> value; missing, None or NaN knobs are left out, as are heads = steps = 1."""
    parts = [str(kernel)]
    for knob in MEMORIES[kernel].knobs if kernel in MEMORIES else KNOBS:
        value = values.get(knob)
        if value is None or (isinstance(value, float) and value != value):
            continue
        if KNOBS[knob].kind is str:
            parts.append(str(value))
        elif not (knob in ("heads", "steps") and int(value) == 1):
            parts.append(f"{knob}={float(value):g}" if KNOBS[knob].kind is float else f"{knob}={int(value)}")
    return " ".join(parts)


def check_implemented(what: str, registry: Mapping[str, Any], declared) -> None:
    """Fail at import when a kernel registry and these names disagree (in content or order)."""
    if tuple(registry) != tuple(declared):
        raise ImportError(f"{what} registry {tuple(registry)} differs from kernels.names {tuple(declared)}: "
                          f"declare each {what} in kernels/names.py and implement it in its registry")
