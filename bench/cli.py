"""The command line of ``python run_all.py``: arguments -> validated spec -> sweep -> store ->
figures -> report. A user error is one line on stderr and exit code 2, with nothing written."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.spec import KERNELS, PATTERNS, PRESETS, SEPARATIONS, SIMILARITIES, SpecError, SweepSpec
from bench.store import StoreError

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other user error
        _fail(f"{message} (see --help)")


def _csv(kind):
    def parse(text: str):
        out = []
        for item in text.split(","):
            item = item.strip()
            try:
                out.append(kind(item))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not a {kind.__name__}; give a comma-separated list") from None
        return tuple(out)

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _int_list(text: str):
    """Integers, with 2^a..2^b as a shorthand for the powers of two between."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if ".." in item and item.startswith("2^"):
            lo, hi = item.split("..")
            try:
                out.extend(2**k for k in range(int(lo[2:]), int(hi.removeprefix("2^")) + 1))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r}: write a power range as 2^6..2^10") from None
            continue
        try:
            out.append(2 ** int(item[2:]) if item.startswith("2^") else int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an integer; give whole numbers like 64,128 or 2^6..2^10") from None
    return tuple(out)


_int_list.__name__ = "list of integers"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run_all.py", description=(
        "Sweep associative memories over dimension d and stored pairs n, write parquet results, "
        "figures and a report. Explicit flags override the preset."))
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="grid to start from: quick (smoke test), default (the classic grid), full (GPU workstation)")
    p.add_argument("--kernels", type=_csv(str), help=f"comma-separated memories: {','.join(KERNELS)}")
    p.add_argument("--d", type=_int_list, help="key dimensions, e.g. 64,128 or 2^6..2^10")
    p.add_argument("--n", type=_int_list, help="numbers of stored pairs, e.g. 2^2..2^15")
    p.add_argument("--dv", type=int, help="value dimension (default: equal to d)")
    p.add_argument("--noise", type=_csv(float), help="relative query noise levels, e.g. 0,0.1")
    p.add_argument("--mask", type=_csv(float),
                   help="fractions of each query's coordinates zeroed, in [0, 1), e.g. 0,0.25 (default 0)")
    p.add_argument("--seeds", type=int, help="seeds per cell (batched with vmap, sharded over devices)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="array dtype (default float32)")
    p.add_argument("--patterns", type=_csv(str),
                   help=f"key/value distributions, comma-separated: {','.join(PATTERNS)} (default gaussian)")
    p.add_argument("--lam", type=_csv(float), help="ridge lambdas (default 1)")
    p.add_argument("--eta", type=_csv(float), help="delta-rule steps in units of 1/||k||^2 (default 1)")
    p.add_argument("--passes", type=_int_list, help="delta-rule passes over the data (default 1)")
    a = p.add_argument_group("attention memories (--kernels attention)")
    a.add_argument("--similarity", type=_csv(str), help=f"scores, comma-separated: {','.join(SIMILARITIES)}")
    a.add_argument("--separation", type=_csv(str), help=f"score to weight maps: {','.join(SEPARATIONS)}")
    a.add_argument("--beta", type=_csv(float), help="inverse temperatures of softmax and topk (default 1)")
    a.add_argument("--topk", type=_int_list, help="k of topk separation (default 8); cells with k > n are skipped")
    a.add_argument("--degree", type=_csv(float), help="degree of polynomial separation (default 3)")
    a.add_argument("--heads", type=_int_list, help="attention heads, each dividing d (default 1)")
    a.add_argument("--steps", type=_int_list,
                   help="updates per recall (default 1; > 1 iterates auto-association: the values are the keys)")
    p.add_argument("--queries", "--acc-queries", type=int, dest="acc_queries", metavar="Q",
                   help="stored keys queried per cell (attention: every metric; matrix memories: the "
                        "nearest-neighbour accuracy; default 1024, all when n is smaller)")
    c = p.add_argument_group("capacity search")
    c.add_argument("--capacity", action="store_true", default=None,
                   help="instead of the n grid, find for each memory setting and d the largest n whose mean "
                        "accuracy stays >= --threshold (doubling, then bisection); writes capacity.parquet")
    c.add_argument("--threshold", type=float, help="accuracy a capacity search requires (default 0.99)")
    c.add_argument("--max-n", type=_int_list, dest="max_n", help="cap of a capacity search (default 2^16)")
    p.add_argument("--method", choices=("auto", "gram64", "qr32"), help="least-squares method (default auto)")
    p.add_argument("--out", type=Path, default=Path("results"), help="where run directories go (default results/)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run in RUN_DIR")
    p.add_argument("--no-report", action="store_true", help="skip figures and report")
    p.add_argument("--no-hallucination", action="store_true",
                   help="skip the fuzzy key-value store's hallucination curve in the report")
    p.add_argument("--compile-cache", type=Path, metavar="DIR",
                   help="JAX persistent compilation cache (default ~/.cache/associative-memory-bench/jax)")
    p.add_argument("--no-compile-cache", action="store_true", help="compile every program afresh")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: only on a terminal)")
    return p


SPEC_FLAGS = ("kernels", "d", "n", "dv", "noise", "seeds", "dtype", "patterns", "lam", "eta", "passes",
              "similarity", "separation", "beta", "topk", "degree", "heads", "steps", "mask", "acc_queries", "method",
              "capacity", "threshold", "max_n")
ATTENTION_FLAGS = ("similarity", "separation", "beta", "topk", "degree", "heads", "steps")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in SPEC_FLAGS if getattr(args, k) is not None}
    if "max_n" in overrides:
        if len(overrides["max_n"]) != 1:
            _fail(f"--max-n: give one number, got {len(overrides['max_n'])}")
        overrides["max_n"] = overrides["max_n"][0]
    try:
        if args.resume is not None:
            return _resume(args, overrides)
        spec = SweepSpec.from_preset(args.preset or "default", **overrides)
        _check_flag_combinations(spec, overrides)
        from bench import store

        store.check_writable(args.out)
    except (SpecError, StoreError) as e:
        _fail(str(e))
    return _start(spec, args)


def _check_flag_combinations(spec: SweepSpec, overrides: dict[str, Any]) -> None:
    """Flags that would be silently ignored are errors."""
    given = [f for f in ATTENTION_FLAGS if f in overrides]
    if given and "attention" not in spec.kernels:
        raise SpecError(f"--{given[0]} applies to attention memories; add attention to --kernels")
    if overrides.get("capacity") and "n" in overrides:
        raise SpecError("--n has no effect with --capacity (the search chooses n); drop it and set the cap "
                        "with --max-n")
    if not overrides.get("capacity") and ("threshold" in overrides or "max_n" in overrides):
        raise SpecError("--threshold and --max-n apply to a capacity search; add --capacity")


def _start(spec: SweepSpec, args) -> int:
    from bench import environment, store

    environment.configure_jax()
    _compile_cache(args)
    run_dir = store.new_run_dir(args.out)
    manifest: dict[str, Any] = {
        "run_id": run_dir.name, "spec": spec.to_dict(), "status": "running", "started": _now(), "ended": None,
        "cell_ids": store.CELL_IDS,
        "command": ["run_all.py", *(sys.argv[1:] if args is not None else [])],
        **environment.describe(),
    }
    manifest["matmul_gflops"] = environment.matmul_gflops(spec.dtype)
    store.write_manifest(run_dir, manifest)
    return _finish(spec, run_dir, args)


def _resume(args, overrides: dict[str, Any]) -> int:
    from bench import store

    run_dir = args.resume
    if not run_dir.is_dir():
        _fail(f"--resume {run_dir}: no such directory; pass a run directory under your --out")
    manifest = store.read_manifest(run_dir)
    try:
        stored = SweepSpec.from_dict(manifest["spec"])
    except (KeyError, TypeError) as e:
        raise StoreError(f"{run_dir}/{store.MANIFEST} has no readable spec ({e}); the run directory is damaged") from e
    if args.preset is not None and args.preset != stored.preset:
        _fail(f"--preset {args.preset} contradicts the run's preset {stored.preset}; drop the flag to resume")
    merged = SweepSpec.from_dict({**stored.to_dict(), **overrides})
    for name in overrides:
        if getattr(merged, name) != getattr(stored, name):
            _fail(f"--{name.replace('_', '-')} {_show(getattr(merged, name))} contradicts the run's "
                  f"{name}={_show(getattr(stored, name))}; drop the flag to resume, or start a new run")
    from bench import environment

    environment.configure_jax()
    _compile_cache(args)
    manifest["resumed"] = [*manifest.get("resumed", []), _now()]
    manifest["status"] = "running"
    store.write_manifest(run_dir, manifest)
    return _finish(stored, run_dir, args)


def _finish(spec: SweepSpec, run_dir: Path, args) -> int:
    from bench import store, sweep

    progress = None if args.progress == "auto" else args.progress == "on"
    try:
        manifest = sweep.run_sweep(spec, run_dir, progress=progress)
    except KeyboardInterrupt:
        print(f"run_all.py: interrupted; finished cells are kept: python run_all.py --resume {run_dir}",
              file=sys.stderr)
        return 130
    manifest["status"] = "complete"
    manifest["ended"] = _now()
    store.write_manifest(run_dir, manifest)
    store.merge(run_dir, manifest, manifest["cell_order"])
    if not args.no_report:
        from bench import hallucination, plots, report

        if not args.no_hallucination:
            hallucination.measure(run_dir)
        plots.draw_all(run_dir)
        report.build(run_dir)
    print(f"run written to {run_dir}")
    return 0


def _compile_cache(args) -> None:
    from bench import environment

    if not args.no_compile_cache:
        try:
            environment.enable_compile_cache(args.compile_cache or environment.default_compile_cache())
        except OSError as e:  # a cache is an optimisation: go on without it
            print(f"run_all.py: warning: compile cache disabled ({e})", file=sys.stderr)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fail(message: str) -> None:
    print(f"run_all.py: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)
