"""The performance regression gate: a fixed, small set of benchmarks whose figures hold still on
a noisy machine, compared with a committed baseline.

    python -m bench.regress                    # measure, compare with bench/baseline/<backend>.json
    python -m bench.regress --update-baseline  # measure --runs times, write that baseline
    python -m bench.regress --only attention_recall,fuzzy_batch

Every figure is named ``<benchmark>.<figure>`` and has one of four kinds:

- ratio: seconds of the timed region over seconds of a float32 2048^3 matmul timed just before
  it (interleaved, so both see the same machine), median over rounds. Absolute times swing by
  20-50% on shared machines; this ratio much less. Fails when it is worse than the baseline by
  more than the figure's tolerance (relative), measured again ``--confirm`` times first.
- count: programs compiled (XLA backend compilations); exact.
- bound: peak memory in GiB (VmHWM of a subprocess); fails above the baseline's limit.
- accuracy: a metric of fixed cells; fails when it moves by more than its tolerance (absolute).

Written into --out: benchmarks.json (pytest-benchmark's format, so ``py.test-benchmark compare``
reads it), figures.json (this run's figures and environment) and gate.md (the verdict table).
Exit status: 0 pass, 1 a regression, 2 a usage error (unknown benchmark, no baseline).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from bench.benchmarks import (BENCHMARKS, MIN_TOLERANCE, REFERENCE_SIZE, Measured, flat, jax_configured, kind_of,
                              measure, reference_seconds)

BASELINE_DIR = Path(__file__).resolve().parent / "baseline"
KINDS = ("ratio", "count", "bound", "accuracy")


class Verdict(NamedTuple):
    """The gate's judgement of one figure. change: relative for ratios (now / baseline - 1),
    absolute otherwise; limit: what it was held to."""

    name: str
    kind: str
    baseline: float | None
    now: float | None
    change: float | None
    limit: str
    ok: bool
    note: str = ""

def judge(baseline: dict[str, dict[str, Any]], now: dict[str, float], *, gate_ratios: bool = True) -> list[Verdict]:
    """Every figure of ``now`` against its baseline entry ({kind, value, tolerance[, limit]}).
    A figure the baseline lacks is reported, not gated; one that was not measured (a benchmark
    left out with --only) is not judged. gate_ratios=False (a baseline measured on another
    machine): ratios are shown, not judged, since a ratio of compile or loop time to a matmul
    depends on the processor; counts, bounds and accuracies are judged all the same."""
    verdicts = []
    for name, value in now.items():
        entry = baseline.get(name)
        if entry is None:
            verdicts.append(Verdict(name, "new", None, value, None, "", True, "not in the baseline: not gated"))
            continue
        kind, base, tol = entry["kind"], float(entry["value"]), float(entry["tolerance"])
        if value is None or not math.isfinite(value):
            verdicts.append(Verdict(name, kind, base, value, None, "", False, "not measured (not finite)"))
        elif kind == "ratio" and not gate_ratios:
            verdicts.append(Verdict(name, kind, base, value, value / base - 1, "not gated", True,
                                    "baseline from another machine"))
        elif kind == "ratio":
            change = value / base - 1
            note = "faster than the baseline beyond its tolerance: refresh it" if change < -tol else ""
            verdicts.append(Verdict(name, kind, base, value, change, f"<= +{tol:.0%}", change <= tol, note))
        elif kind == "count":
            verdicts.append(Verdict(name, kind, base, value, value - base, "exact", value == base))
        elif kind == "bound":
            limit = float(entry.get("limit", base * (1 + tol)))
            verdicts.append(Verdict(name, kind, base, value, value - base, f"<= {limit:.3g}", value <= limit))
        elif kind == "accuracy":
            change = value - base
            verdicts.append(Verdict(name, kind, base, value, change, f"+-{tol:.0e}", abs(change) <= tol))
        else:
            raise ValueError(f"baseline figure {name} has unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    return verdicts


def table(verdicts: list[Verdict], only_failures: bool = False) -> str:
    """The verdicts as a markdown table, regressions first."""
    rows = sorted(verdicts, key=lambda v: (v.ok, v.name))
    if only_failures:
        rows = [v for v in rows if not v.ok]
    lines = ["| figure | kind | baseline | now | change | held to | verdict |", "|---|---|---|---|---|---|---|"]
    for v in rows:
        change = "" if v.change is None else (f"{v.change:+.1%}" if v.kind == "ratio" else f"{v.change:+.3g}")
        verdict = ("ok" if v.ok else "REGRESSED") + (f" ({v.note})" if v.note else "")
        lines.append(f"| {v.name} | {v.kind} | {_num(v.baseline)} | {_num(v.now)} | {change} | {v.limit} | "
                     f"{verdict} |")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def baseline_path(backend: str) -> Path:
    return BASELINE_DIR / f"{backend}.json"


def new_baseline(runs: list[dict[str, float]], environment: dict[str, Any]) -> dict[str, Any]:
    """A baseline from several runs' figures: each figure's median over runs, and for ratios a
    tolerance above the measured noise in the direction that fails (twice the largest rise over
    the median, at least MIN_TOLERANCE, rounded up to 5%)."""
    figures = {}
    for name in runs[0]:
        values = [r[name] for r in runs]
        kind, tol = kind_of(name)
        value = statistics.median(values)
        entry: dict[str, Any] = {"kind": kind, "value": value, "runs": values}
        if kind == "ratio":
            worst = max(values) / value - 1
            entry["spread"] = worst
            entry["range"] = [min(values), max(values)]
            tol = max(MIN_TOLERANCE, math.ceil(2 * worst * 20 - 1e-9) / 20)
        elif kind == "bound":
            entry["limit"] = round(max(values) * (1 + tol), 3)
        entry["tolerance"] = tol
        figures[name] = entry
    return {"measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "runs": len(runs),
            "environment": environment, "figures": figures}


def environment() -> dict[str, Any]:
    from bench import environment as env

    jax_configured()
    about = env.describe()
    keep = ("versions", "python", "backend", "device_kind", "device_count", "matmul_precision", "x64", "git_commit",
            "git_dirty", "platform")
    return {**{k: about[k] for k in keep}, "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "reference_gflops": 2 * REFERENCE_SIZE**3 / reference_seconds(5) / 1e9}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or None


ENVIRONMENT_FIELDS = ("backend", "device_kind", "device_count", "cpu", "cpus", "x64", "matmul_precision")


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'field: A -> B' for each environment field (and jax/jaxlib version) that differs."""
    out = [f"{k}: {a.get(k)} -> {b.get(k)}" for k in ENVIRONMENT_FIELDS if a.get(k) != b.get(k)]
    for pkg in ("jax", "jaxlib"):
        va, vb = (a.get("versions") or {}).get(pkg), (b.get("versions") or {}).get(pkg)
        if va != vb:
            out.append(f"{pkg}: {va} -> {vb}")
    return out


def pytest_benchmark_json(results: dict[str, Measured]) -> dict[str, Any]:
    """pytest-benchmark's JSON: its own machine and commit info and statistics of the timed
    region per round; the figures ride in extra_info."""
    from pytest_benchmark import __version__
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.stats import Stats
    from pytest_benchmark.utils import get_commit_info

    benchmarks = []
    for name, m in results.items():
        entry = {"group": "regress", "name": name, "fullname": f"bench/regress.py::{name}", "params": None,
                 "param": None, "extra_info": m.figures,
                 "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": len(m.seconds),
                             "max_time": 0, "min_time": 0, "precision": None, "confidence": None, "warmup": False}}
        if m.seconds:
            stats = Stats()
            for s in m.seconds:
                stats.update(s)
            entry["stats"] = {**stats.as_dict(), "data": list(m.seconds), "iterations": 1}
        else:
            continue  # pytest-benchmark needs statistics; a figure-only benchmark lives in figures.json
        benchmarks.append(entry)
    return {"machine_info": pytest_benchmark_generate_machine_info(), "commit_info": get_commit_info(),
            "benchmarks": benchmarks, "datetime": dt.datetime.now(dt.timezone.utc).isoformat(),
            "version": __version__}


def _write(path: Path, text: str) -> None:
    from bench import store

    store.atomic_write_bytes(path, text.encode())


class UsageError(ValueError):
    """A bad argument; the message names it and the fix."""


def machine(env: dict[str, Any]) -> str:
    """The machine a baseline belongs to: backend, device, processor model and count."""
    return f"{env.get('backend')} | {env.get('device_kind')} x {env.get('device_count')} | {env.get('cpu')} | " \
           f"{env.get('cpus')} cpus"


def pick(baselines: dict[str, Any], env: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The baseline of this machine, or (when there is none) the newest one of the file and False."""
    machines = baselines["machines"]
    here = machine(env)
    if here in machines:
        return machines[here], True
    return max(machines.values(), key=lambda b: str(b.get("measured"))), False


def run_gate(names: list[str], rounds: int, out: Path, confirm: int, baselines: dict[str, Any],
             say: Callable[[str], None]) -> tuple[bool, list[Verdict], dict[str, Measured]]:
    """Measure, judge and write the outputs. A ratio that looks regressed is measured again
    (its whole benchmark, up to ``confirm`` more times) and judged on its best measurement, so a
    busy neighbour process does not fail the gate; a real slowdown fails every time."""
    here = environment()
    baseline, same_machine = pick(baselines, here)
    if not same_machine:
        say(f"no baseline for this machine ({machine(here)}): time ratios are shown, not gated; record one with "
            "--update-baseline")
    results, failed = _measure_each(names, rounds, say)
    verdicts = judge(baseline["figures"], flat(results), gate_ratios=same_machine) + failed
    for _ in range(confirm):
        suspects = sorted({v.name.partition(".")[0] for v in verdicts if not v.ok and v.kind == "ratio"})
        if not suspects:
            break
        say(f"measuring again: {', '.join(suspects)}")
        again = measure(suspects, rounds)
        for name in suspects:
            best = results[name].figures.copy()
            for fig, value in again[name].figures.items():
                if kind_of(f"{name}.{fig}")[0] == "ratio":
                    best[fig] = min(best[fig], value)
            results[name] = Measured(best, results[name].seconds + again[name].seconds)
        verdicts = judge(baseline["figures"], flat(results), gate_ratios=same_machine) + failed
    ok = all(v.ok for v in verdicts)
    differs = environment_differences(baseline.get("environment") or {}, here)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "benchmarks.json", json.dumps(pytest_benchmark_json(results), indent=1, default=str))
    _write(out / "figures.json", json.dumps({"environment": here, "figures": flat(results)}, indent=1, default=str))
    header = [f"# Regression gate: {'pass' if ok else 'FAIL'}", "",
              f"Baseline: {machine(baseline.get('environment') or {})}, measured {baseline.get('measured')} over "
              f"{baseline.get('runs')} runs{'' if same_machine else ' (another machine: ratios not gated)'}."]
    if differs:
        header.append("Environment differs from the baseline's: " + "; ".join(differs) + ".")
    _write(out / "gate.md", "\n".join(header + ["", table(verdicts), ""]))
    return ok, verdicts, results


def _measure_each(names: list[str], rounds: int, say: Callable[[str], None]) -> tuple[dict[str, Measured], list[Verdict]]:
    """Every named benchmark; one that raises is a failing verdict (never a silent pass), and
    the others still run."""
    results, failed = {}, []
    for name in names:
        try:
            results.update(measure([name], rounds, lambda n: say(f"measuring {n}")))
        except Exception as e:  # noqa: BLE001 - reported as a regression
            text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            failed.append(Verdict(name, "error", None, None, None, "runs", False, f"{type(e).__name__}: {text}"))
    return results, failed


def update_baseline(path: Path, names: list[str], rounds: int, runs: int, say: Callable[[str], None]) -> dict:
    """Measure ``runs`` times and write this machine's baseline into ``path`` (other machines'
    baselines kept; with a subset of benchmarks, the others' figures kept too)."""
    measured = []
    for i in range(runs):
        say(f"baseline run {i + 1}/{runs}")
        measured.append(flat(measure(names, rounds, lambda name: say(f"measuring {name}"))))
    fresh = new_baseline(measured, environment())
    baselines = _read_baseline(path) if path.is_file() else {"machines": {}}
    here = machine(fresh["environment"])
    if set(names) != set(BENCHMARKS) and here in baselines["machines"]:
        kept = {k: v for k, v in baselines["machines"][here]["figures"].items() if k.partition(".")[0] not in names}
        fresh["figures"] = {**kept, **fresh["figures"]}
    baselines["machines"][here] = fresh
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, json.dumps(baselines, indent=1, default=str) + "\n")
    return fresh


def main(argv: list[str] | None = None) -> int:
    from bench.cli import OneLineParser

    parser = OneLineParser(prog="python -m bench.regress", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="benchmarks:\n" + "\n".join(f"  {b.name}: {b.about.split(chr(10))[0]}"
                                                                          for b in BENCHMARKS.values()))
    parser.add_argument("--only", metavar="NAMES", help="comma-separated benchmarks to run (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per benchmark (default 5)")
    parser.add_argument("--confirm", type=int, default=2,
                        help="times a regressed ratio is measured again before it fails the gate (default 2)")
    parser.add_argument("--out", type=Path, default=Path("results/regress"), help="where the outputs go")
    parser.add_argument("--baseline", type=Path, help="baseline file (default bench/baseline/<backend>.json)")
    parser.add_argument("--update-baseline", action="store_true",
                        help="measure --runs times and write the baseline instead of judging")
    parser.add_argument("--runs", type=int, default=5, help="runs behind a new baseline (default 5)")
    args = parser.parse_args(argv)
    try:
        names = _names(args.only)
        for flag in ("rounds", "runs"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag} {getattr(args, flag)}: use a whole number >= 1")
        if args.confirm < 0:
            raise UsageError(f"--confirm {args.confirm}: use a whole number >= 0")
        path = args.baseline or baseline_path(jax_configured().default_backend())
        say = lambda s: print(f"bench.regress: {s}", file=sys.stderr, flush=True)  # noqa: E731
        if args.update_baseline:
            update_baseline(path, names, args.rounds, args.runs, say)
            print(f"baseline written to {path}")
            return 0
        baselines = _read_baseline(path)
    except UsageError as e:
        print(f"bench.regress: error: {e}", file=sys.stderr)
        return 2
    ok, verdicts, _ = run_gate(names, args.rounds, args.out, args.confirm, baselines, say)
    print(table(verdicts))
    print(f"\nregression gate: {'pass' if ok else 'FAIL'} ({sum(not v.ok for v in verdicts)} regressed of "
          f"{len(verdicts)} figures); outputs in {args.out}")
    return 0 if ok else 1


def _names(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise UsageError(f"--only {only}: unknown benchmark {', '.join(unknown) or '(none given)'}; use some of "
                         f"{', '.join(BENCHMARKS)}")
    return names


def _read_baseline(path: Path) -> dict[str, Any]:
    try:
        baseline = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no baseline at {path}; measure one with `python -m bench.regress --update-baseline` "
                         "on this backend") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"baseline {path} cannot be read ({e}); refresh it with --update-baseline") from None
    machines = baseline.get("machines") if isinstance(baseline, dict) else None
    if not isinstance(machines, dict) or not machines or not all(
            isinstance(b, dict) and isinstance(b.get("figures"), dict) for b in machines.values()):
        raise UsageError(f"baseline {path} has no machines with figures; refresh it with --update-baseline")
    return baseline


if __name__ == "__main__":
    sys.exit(main())
