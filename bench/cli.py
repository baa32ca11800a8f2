"""The command line of ``python run_all.py``: arguments -> validated spec -> bench.pipeline (sweep ->
store -> figures -> report). A user error is one line on stderr and exit code 2, with nothing written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.spec import AXES, KERNELS, KNOBS, KNOBS_OF, METHODS, PATTERNS, PRESETS, SCALARS, SpecError, SweepSpec
from kernels.names import DTYPES, SEPARATIONS, SIMILARITIES
from bench.store import StoreError

USAGE_ERROR = 2
FAULT = 1  # the machine failed the run (disk full, read-only), not the user


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line ("PROG: error: ...") and exit code 2, as for every
    other user error; the suite's other commands (bench.compare, bench.regress) use it too."""

    def error(self, message: str) -> None:
        print(f"{self.prog.removeprefix('python -m ')}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


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


def _directory(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; give the directory that run directories go into")
    return Path(text)


def _int_list(text: str):
    """Integers, with 2^a..2^b as a shorthand for the powers of two between (exponents up to
    MAX_EXPONENT: a longer range could never run, and expanding it would hang)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if ".." in item and item.startswith("2^"):
            lo, hi = item.split("..", 1)
            try:
                lo, hi = _exponent(lo[2:]), _exponent(hi.removeprefix("2^"))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r}: write a power range as 2^6..2^10") from None
            except OverflowError:
                raise argparse.ArgumentTypeError(
                    f"{item!r}: exponents go up to {MAX_EXPONENT} (sizes are below 2^31)") from None
            out.extend(2**k for k in range(lo, hi + 1))
            continue
        try:
            out.append(2 ** _exponent(item[2:]) if item.startswith("2^") else int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an integer; give whole numbers like 64,128 or 2^6..2^10") from None
        except OverflowError:
            raise argparse.ArgumentTypeError(
                f"{item!r}: exponents go up to {MAX_EXPONENT} (sizes are below 2^31)") from None
    return tuple(out)


MAX_EXPONENT = 62


def _yes_no_list(text: str):
    """Comma-separated yes / no (true / false, on / off, 1 / 0) as booleans."""
    words = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
    out = []
    for item in text.split(","):
        if item.strip().lower() not in words:
            raise argparse.ArgumentTypeError(f"{item!r} is not yes or no; give no, yes or no,yes")
        out.append(words[item.strip().lower()])
    return tuple(out)


_yes_no_list.__name__ = "list of yes/no"


def _exponent(text: str) -> int:
    """The k of 2^k: ValueError when it is no whole number >= 0, OverflowError beyond MAX_EXPONENT."""
    text = text.strip()
    if not text.isdigit():
        raise ValueError(text)
    if len(text) > 2 or int(text) > MAX_EXPONENT:
        raise OverflowError(text)
    return int(text)


_int_list.__name__ = "list of integers"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="run_all.py", description=(
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
    p.add_argument("--dtype", choices=DTYPES, help="array dtype (default float32)")
    p.add_argument("--patterns", type=_csv(str),
                   help=f"key/value distributions, comma-separated: {','.join(PATTERNS)} (default gaussian)")
    attention = p.add_argument_group("attention memories (--kernels attention)")
    choices = {"similarity": SIMILARITIES, "separation": SEPARATIONS}
    for knob in KNOBS.values():  # one flag per knob of kernels.names, in the attention group if only it reads it
        group = attention if knob.name in ATTENTION_FLAGS else p
        help = knob.help + (f": {','.join(choices[knob.name])}" if knob.name in choices else "")
        group.add_argument(f"--{knob.name}", type=_int_list if knob.kind is int else _csv(knob.kind), help=help)
    p.add_argument("--queries", "--acc-queries", type=int, dest="acc_queries", metavar="Q",
                   help="stored keys queried per cell (attention: every metric; matrix memories: the "
                        "nearest-neighbour accuracy; default 1024, all when n is smaller)")
    c = p.add_argument_group("capacity search")
    c.add_argument("--capacity", action="store_true", default=None,
                   help="instead of the n grid, find for each memory setting and d the largest n whose mean "
                        "accuracy stays >= --threshold (doubling, then bisection); writes capacity.parquet")
    c.add_argument("--threshold", type=float, help="accuracy a capacity search requires (default 0.99)")
    c.add_argument("--max-n", type=_int_list, dest="max_n", help="cap of a capacity search (default 2^16)")
    p.add_argument("--method", choices=METHODS, help="least-squares method (default auto)")
    t = p.add_argument_group("nested dictionaries (--nested; README: 'Nested dictionaries read by attention')")
    t.add_argument("--nested", action="store_true", default=None,
                   help="sweep nested dictionaries read level by level against flat baselines (the 'nested' preset: "
                        "also reads --d, --beta, --topk as the beam width, --similarity, --seeds, --queries)")
    t.add_argument("--form", type=_csv(str), help="tree forms: cartesian,independent,collision,random,dag (default all)")
    t.add_argument("--depth", type=_int_list, help="levels of keys, 1..8 (default 2,3,4)")
    t.add_argument("--branching", type=_int_list, help="keys per node (default 4,8)")
    t.add_argument("--vary-branching", type=_yes_no_list, dest="vary_branching",
                   help="no: every node holds --branching keys; yes: each node below the root draws 1..branching; "
                        "both: no,yes (default no)")
    t.add_argument("--collision", type=_csv(float),
                   help="fractions of keys that coincide across parents (forms collision, random; default 1)")
    t.add_argument("--sharing", type=_csv(float),
                   help="fractions of nested values that reuse a sub-dictionary of another parent (form dag; "
                        "default 0.5)")
    t.add_argument("--mode", type=_csv(str),
                   help="readers: soft,sparse,topk (level by level), flat_attention,flat_pinv (composite keys), stacked "
                        "(default all)")
    t.add_argument("--composition", type=_csv(str),
                   help="composite keys of the flat readers: sum,concat,hadamard,circular (default all)")
    p.add_argument("--out", type=_directory, default=Path("results"), help="where run directories go (default results/)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run in RUN_DIR")
    p.add_argument("--no-report", action="store_true", help="skip figures and report")
    p.add_argument("--no-hallucination", action="store_true",
                   help="skip the fuzzy key-value store's hallucination curve in the report")
    p.add_argument("--compile-cache", type=Path, metavar="DIR",
                   help="JAX persistent compilation cache (default ~/.cache/associative-memory-bench/jax)")
    p.add_argument("--no-compile-cache", action="store_true", help="compile every program afresh")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: only on a terminal)")
    m = p.add_argument_group("multi-process runs (jax.distributed; README: 'Sweeps over several processes')")
    m.add_argument("--distributed", action="store_true",
                   help="one of several processes sharing the run (the same command in each); without the three "
                        "flags below, jax.distributed.initialize detects them (SLURM, Open MPI, Cloud TPU)")
    m.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (it hosts the coordinator)")
    m.add_argument("--num-processes", type=int, metavar="P", help="how many processes share the run")
    m.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..P-1")
    m.add_argument("--connect-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the coordinator and the other processes (default 300)")
    m.add_argument("--barrier-timeout", type=float, default=86400.0, metavar="S",
                   help="seconds process 0 waits for the others to finish their cells (default 86400)")
    return p


SPEC_FLAGS = AXES + SCALARS
# Knobs that only attention memories read: given without attention in --kernels, they are errors.
ATTENTION_FLAGS = tuple(k for k in KNOBS_OF["attention"] if all(k not in KNOBS_OF[m] for m in KNOBS_OF if m != "attention"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in SPEC_FLAGS if getattr(args, k) is not None}
    if "max_n" in overrides:
        if len(overrides["max_n"]) != 1:
            _fail(f"--max-n: give one number, got {len(overrides['max_n'])}")
        overrides["max_n"] = overrides["max_n"][0]
    from bench import cluster as clusters, pipeline, store

    cache = None if args.no_compile_cache else (args.compile_cache or pipeline.default_compile_cache())
    cluster = clusters.ALONE
    try:
        _check_cluster_flags(args)
        if args.resume is None:
            if args.nested and args.preset not in (None, "nested"):
                raise SpecError(f"--nested is its own preset; drop --preset {args.preset}")
            preset = "nested" if args.nested else (args.preset or "default")
            spec = SweepSpec.from_preset(preset, **overrides)
            _check_flag_combinations(spec, overrides)
            if args.distributed and spec.capacity:
                raise SpecError("--capacity runs in one process (each probe depends on the last); drop --distributed")
            if args.distributed and spec.nested:
                raise SpecError("--nested runs in one process (its cells take seconds); drop --distributed")
            store.check_writable(args.out)
        if args.distributed:  # before any JAX computation
            cluster = clusters.join(args.coordinator, args.num_processes, args.process_id, args.connect_timeout,
                                    args.barrier_timeout)
        if args.resume is not None:
            run = pipeline.resume(args.resume, overrides, args.preset, compile_cache=cache, cluster=cluster)
        else:
            run = pipeline.start(spec, args.out, ["run_all.py", *(sys.argv[1:] if argv is None else argv)],
                                 compile_cache=cache, cluster=cluster)
    except (SpecError, StoreError, clusters.ClusterError) as e:
        _fail(str(e))
    except OSError as e:  # e.g. the disk filled while the manifest was written
        print(f"run_all.py: error: {e.filename or 'writing the run'}: {e.strerror or e}; nothing ran: fix that and "
              "run again", file=sys.stderr)
        return FAULT
    if cluster.processes > 1:  # a process that dies takes the others down with it (jax.distributed)
        print(f"run_all.py: process {cluster.process} of {cluster.processes}, run directory {run.run_dir} (if a "
              f"process dies, resume with: python run_all.py --resume {run.run_dir})", file=sys.stderr)
    progress = None if args.progress == "auto" else args.progress == "on"
    try:
        pipeline.execute(run, report=not args.no_report, hallucination=not args.no_hallucination,
                         progress=progress)
    except KeyboardInterrupt:
        print(f"run_all.py: interrupted; finished cells are kept: python run_all.py --resume {run.run_dir}",
              file=sys.stderr)
        return 130
    except SpecError as e:  # a resumed capacity run with several processes
        _fail(str(e))
    except clusters.ClusterError as e:  # a process that never finished: what the others wrote is kept
        print(f"run_all.py: error: {e}; finished cells are kept: python run_all.py --resume {run.run_dir}",
              file=sys.stderr)
        return FAULT
    except (OSError, StoreError) as e:  # a full disk, a read-only remount: what is written stays valid
        what = f"{e.filename}: {e.strerror or e}" if isinstance(e, OSError) and e.filename else str(e)
        safe = len(list((run.run_dir / store.PARTS).glob("*.parquet")))
        print(f"run_all.py: error: {what}; the {safe} finished cells in {run.run_dir} are safe: fix that (free space, "
              f"make it writable), then python run_all.py --resume {run.run_dir}", file=sys.stderr)
        return FAULT
    if cluster.leader:
        print(f"run written to {run.run_dir}")
    else:
        print(f"process {cluster.process}: its cells written to {run.run_dir}; process 0 merges and reports")
    return 0


def _check_cluster_flags(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in ("coordinator", "num_processes", "process_id")
             if getattr(args, name) is not None]
    if given and not args.distributed:
        raise SpecError(f"{given[0]} applies to a multi-process run; add --distributed")


# Flags of the memory grid that a nested sweep does not read, and the nested sweep's own.
GRID_ONLY = ("kernels", "n", "noise", "patterns", "mask", "method", "capacity", "threshold", "max_n", "dv",
             *(k for k in KNOBS if k not in ("similarity", "beta", "topk")))
NESTED_ONLY = ("form", "depth", "branching", "vary_branching", "collision", "sharing", "mode", "composition")


def _check_flag_combinations(spec: SweepSpec, overrides: dict[str, Any]) -> None:
    """Flags that would be silently ignored are errors."""
    if spec.nested:
        given = [f for f in GRID_ONLY if f in overrides]
        if given:
            raise SpecError(f"--{given[0].replace('_', '-')} applies to the memory grid, not to --nested; drop it")
        return
    given = [f for f in NESTED_ONLY if f in overrides]
    if given:
        raise SpecError(f"--{given[0].replace('_', '-')} applies to nested dictionaries; add --nested")
    given = [f for f in ATTENTION_FLAGS if f in overrides]
    if given and "attention" not in spec.kernels:
        raise SpecError(f"--{given[0]} applies to attention memories; add attention to --kernels")
    if overrides.get("capacity") and "n" in overrides:
        raise SpecError("--n has no effect with --capacity (the search chooses n); drop it and set the cap "
                        "with --max-n")
    if not overrides.get("capacity") and ("threshold" in overrides or "max_n" in overrides):
        raise SpecError("--threshold and --max-n apply to a capacity search; add --capacity")


def _fail(message: str) -> None:
    print(f"run_all.py: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)
