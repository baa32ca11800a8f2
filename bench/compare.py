"""Two runs side by side: metric differences and speed ratios of the cells both ran.

    python -m bench.compare RUN_A RUN_B [--out DIR]

Cells are joined on their settings (memory, knobs, patterns, dtype, noise, mask, d, dv, n) and
seed; only seeds both ran count. For each cell: the change of cosine, distance and accuracy
(B - A, means over the common seeds) and the speed ratio B / A of run time per seed (above 1:
B is slower) and of GFLOP/s; per family (a setting and d): the ratio of compile time. A cell is
flagged when a metric moved more than --metric-tol (on the same backend and code the metrics
are reproducible to the last bit; across backends they differ by rounding), when its speed
ratio is beyond --speed-tol either way (cells of at least --min-time seconds per seed: shorter
ones swing by several times between identical runs), or when its status changed. The table goes to stdout;
DIR (default results/compare/<A>-vs-<B>) gets compare.md, a self-contained compare.html with
figures, cells.parquet (the joined table) and figures/.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bench import rundir, store
from bench.report import Block, as_text, markdown_table, to_html, to_markdown
from bench.summaries import SETTING_COLUMNS, setting_name

CELL_KEYS = SETTING_COLUMNS + ["d", "dv", "n"]
METRICS = ("cos_mean", "dist_mean", "acc")
# Defaults from two runs of one spec on one 2-core machine (README, "Comparing two runs").
METRIC_TOL = 1e-4
SPEED_TOL = 1.0  # beyond 2x either way: per-cell times of identical runs spread 0.77-1.51x (5-95%) here
MIN_TIME = 0.05  # seconds per seed below which a cell's speed is not flagged (dispatch and contention noise)
ENVIRONMENT = ("backend", "device_kind", "device_count", "x64", "matmul_precision", "threefry_partitionable", "host",
               "git_commit", "git_dirty", "matmul_gflops")


class CompareError(ValueError):
    """Two runs that cannot be compared; the message names why and what to do."""


class Comparison(NamedTuple):
    """cells: one row per common cell (settings, metric means of A and B and their change, run
    seconds per seed, speed ratios, status, flags); families: compile and run per family;
    environment: (field, A, B) rows; only_a / only_b: cells one run has and the other lacks."""

    a: rundir.Run
    b: rundir.Run
    cells: pd.DataFrame
    families: pd.DataFrame
    environment: list[tuple[str, Any, Any]]
    only_a: int
    only_b: int


def environment_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    rows = [(k, a.get(k), b.get(k)) for k in ENVIRONMENT]
    for pkg in sorted(set(a.get("versions") or {}) | set(b.get("versions") or {})):
        rows.append((pkg, (a.get("versions") or {}).get(pkg), (b.get("versions") or {}).get(pkg)))
    return rows


def differences(rows: list[tuple[str, Any, Any]]) -> list[str]:
    """'field A -> B' for the fields that decide speed or numbers (not host, commit or rate)."""
    ignore = {"host", "git_commit", "git_dirty", "matmul_gflops"}
    return [f"{k} {va} -> {vb}" for k, va, vb in rows if va != vb and k not in ignore]


def _per_cell(df: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    rows = df.merge(seeds, on=CELL_KEYS + ["seed"], how="inner")
    statuses = rows.groupby(CELL_KEYS, dropna=False)["status"].agg(lambda s: ",".join(sorted(set(s))))
    out = rows.groupby(CELL_KEYS, dropna=False).agg(
        cos_mean=("cos_mean", "mean"), dist_mean=("dist_mean", "mean"), acc=("acc", "mean"),
        run_s=("run_s", "mean"), flops=("flops", "mean"), seeds=("seed", "count")).reset_index()
    return out.merge(statuses.rename("status").reset_index(), on=CELL_KEYS, how="left")


def compare(a: rundir.Run, b: rundir.Run, metric_tol: float = METRIC_TOL, speed_tol: float = SPEED_TOL,
            min_time: float = MIN_TIME) -> Comparison:
    """Join two runs on their cells; CompareError when they share none."""
    da, db = a.results, b.results
    ids_a = da[CELL_KEYS].drop_duplicates()
    ids_b = db[CELL_KEYS].drop_duplicates()
    common = ids_a.merge(ids_b, on=CELL_KEYS, how="inner")
    if common.empty:
        raise CompareError(f"{a.path} and {b.path} share no cells ({_grid_text(da)} vs {_grid_text(db)}); compare "
                           "runs whose memories, d and n overlap")
    seeds = da[CELL_KEYS + ["seed"]].merge(db[CELL_KEYS + ["seed"]], on=CELL_KEYS + ["seed"], how="inner")
    if seeds.empty:
        raise CompareError(f"{a.path} and {b.path} share cells but no seeds; compare runs with a seed in common")
    ca, cb = _per_cell(da, seeds), _per_cell(db, seeds)
    cells = ca.merge(cb, on=CELL_KEYS + ["seeds"], suffixes=("_a", "_b"))
    for m in METRICS:
        cells[f"{m}_change"] = cells[f"{m}_b"] - cells[f"{m}_a"]
    cells["speed_ratio"] = cells["run_s_b"] / cells["run_s_a"].where(cells["run_s_a"] > 0)
    cells["gflops_a"] = cells["flops_a"] / cells["run_s_a"].where(cells["run_s_a"] > 0) / 1e9
    cells["gflops_b"] = cells["flops_b"] / cells["run_s_b"].where(cells["run_s_b"] > 0) / 1e9
    scale = np.maximum(1.0, cells["dist_mean_a"].abs().fillna(1.0))
    moved = ((cells["cos_mean_change"].abs() > metric_tol) | (cells["dist_mean_change"].abs() > metric_tol * scale)
             | (cells["acc_change"].abs() > metric_tol))
    # NaN on one side only is a change; on both sides (a nan cell twice) it is not.
    for m in METRICS:
        moved |= cells[f"{m}_a"].isna() != cells[f"{m}_b"].isna()
    # Cells of a few milliseconds swing by several times between identical runs: not flagged.
    timed = np.maximum(cells["run_s_a"].fillna(0), cells["run_s_b"].fillna(0)) >= min_time
    ratio = cells["speed_ratio"].where(timed)
    cells["flag"] = [", ".join(f for f, on in (("metrics", mv), ("slower", r > 1 + speed_tol),
                                                ("faster", r < 1 / (1 + speed_tol)), ("status", sa != sb)) if on)
                     for mv, r, sa, sb in zip(moved, ratio.fillna(1.0), cells["status_a"], cells["status_b"])]
    cells.insert(0, "setting", [setting_name(r) for _, r in cells.iterrows()])
    families = _families(da, db, cells)
    only_a = len(ids_a) - len(common)
    only_b = len(ids_b) - len(common)
    return Comparison(a, b, cells, families, environment_rows(a.manifest, b.manifest), only_a, only_b)


def _families(da: pd.DataFrame, db: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per family (setting and d) both ran: compile seconds in each run (all its rows: the
    compile is charged to a family's first cell), run seconds per seed over the common cells,
    and their ratios B / A (the run ratio is total over total, so large cells weigh most)."""
    keys = SETTING_COLUMNS + ["d", "dv"]
    compile_a = da.groupby(keys, dropna=False)["compile_s"].sum().rename("compile_s_a")
    compile_b = db.groupby(keys, dropna=False)["compile_s"].sum().rename("compile_s_b")
    run = cells.groupby(["setting"] + keys, dropna=False).agg(
        cells=("n", "count"), run_s_a=("run_s_a", "sum"), run_s_b=("run_s_b", "sum")).reset_index()
    out = run.merge(compile_a.reset_index(), on=keys, how="left").merge(compile_b.reset_index(), on=keys, how="left")
    out["compile_ratio"] = out["compile_s_b"] / out["compile_s_a"].where(out["compile_s_a"] > 0)
    out["run_ratio"] = out["run_s_b"] / out["run_s_a"].where(out["run_s_a"] > 0)
    return out[["setting", "d", "cells", "compile_s_a", "compile_s_b", "compile_ratio", "run_s_a", "run_s_b",
                "run_ratio"]]


def _grid_text(df: pd.DataFrame) -> str:
    def values(col):
        return ",".join(str(v) for v in sorted(df[col].dropna().unique()))

    return f"kernels {values('kernel')}, d {values('d')}, n {values('n')}"


def text_table(df: pd.DataFrame, limit: int | None = None) -> str:
    """A DataFrame as a markdown table of formatted text (4 significant digits, blanks for NaN)."""
    return markdown_table(as_text(df if limit is None else df.head(limit)))


CELL_COLUMNS = ["setting", "d", "n", "seeds", "cos_mean_a", "cos_mean_change", "dist_mean_change", "acc_change",
                "run_s_a", "run_s_b", "speed_ratio", "status_a", "status_b", "flag"]


def summary_lines(c: Comparison) -> list[str]:
    ratio = c.cells["speed_ratio"].dropna()
    ratio = ratio[ratio > 0]
    flagged = c.cells[c.cells["flag"] != ""]
    lines = [f"A: {c.a.path} ({c.a.manifest.get('started')}, commit {str(c.a.manifest.get('git_commit'))[:10]})",
             f"B: {c.b.path} ({c.b.manifest.get('started')}, commit {str(c.b.manifest.get('git_commit'))[:10]})",
             f"cells compared: {len(c.cells)} (only in A: {c.only_a}, only in B: {c.only_b}); flagged: {len(flagged)} "
             f"(metrics {flagged['flag'].str.contains('metrics').sum()}, slower {flagged['flag'].str.contains('slower').sum()}, "
             f"faster {flagged['flag'].str.contains('faster').sum()}, status {flagged['flag'].str.contains('status').sum()})",
             f"largest metric change: cos {_max_abs(c.cells['cos_mean_change'])}, dist {_max_abs(c.cells['dist_mean_change'])}, "
             f"acc {_max_abs(c.cells['acc_change'])}",
             f"speed B / A per cell: geometric mean {_geomean(ratio)}, range {_range(ratio)}; total run time "
             f"{c.cells['run_s_b'].sum() / max(c.cells['run_s_a'].sum(), 1e-300):.3g}x"]
    differ = differences(c.environment)
    lines.append("environment differs: " + "; ".join(differ) if differ else "environment: the same backend, device, "
                 "versions and settings")
    return lines


def _max_abs(s: pd.Series) -> str:
    s = s.dropna()
    return "n/a" if s.empty else f"{s.abs().max():.3g}"


def _geomean(s: pd.Series) -> str:
    return "n/a" if s.empty else f"{math.exp(np.log(s).mean()):.3g}"


def _range(s: pd.Series) -> str:
    return "n/a" if s.empty else f"{s.min():.3g}-{s.max():.3g}"


def document(c: Comparison, figures: list[Path]) -> list[Block]:
    env = pd.DataFrame([(k, "" if va is None else str(va), "" if vb is None else str(vb), "yes" if va != vb else "")
                        for k, va, vb in c.environment], columns=["field", "A", "B", "differs"])
    flagged = c.cells[c.cells["flag"] != ""].copy()
    flagged["_order"] = (np.log(flagged["speed_ratio"].fillna(1.0).clip(lower=1e-300)).abs()
                         + 1e3 * flagged["flag"].str.contains("metrics|status"))
    flagged = flagged.sort_values("_order", ascending=False)[CELL_COLUMNS]
    blocks = [Block("title", "Comparison of two runs"), Block("heading", "Runs and environment"),
              Block("facts", [(f"line {i + 1}", line) for i, line in enumerate(summary_lines(c))]),
              Block("table", env), Block("heading", "Per family: compile and run time"),
              Block("paragraph", "Ratios are B / A (above 1: B is slower). Run seconds are per seed, summed over the "
                                 "cells both runs have; compile seconds are each run's own."),
              Block("table", as_text(c.families)),
              Block("heading", f"Flagged cells ({len(flagged)})"),
              Block("paragraph", "A metric moved beyond the tolerance, the speed ratio is beyond its tolerance, or the "
                                 "status changed. Largest first; at most 200 shown (cells.parquet has every cell)."),
              Block("table", as_text(flagged.head(200)))]
    blocks.append(Block("heading", "Figures"))
    blocks += [Block("figure", p) for p in figures]
    return blocks


def draw(c: Comparison, fig_dir: Path) -> list[Path]:
    """Per setting, against n: the speed ratio B / A and the cosine change B - A, one line per d."""
    from matplotlib.figure import Figure

    from bench.plots import save_figure

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    settings = sorted(c.cells["setting"].unique())
    for column, label, name, log in (("speed_ratio", "run time per seed, B / A", "speed_ratio", True),
                                     ("cos_mean_change", "mean cosine, B - A", "cos_change", False)):
        cols = min(3, len(settings))
        rows = -(-len(settings) // cols)
        fig = Figure(figsize=(5 * cols, 3.6 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, setting in zip(axes, settings):
            group = c.cells[c.cells["setting"] == setting]
            for d, sub in group.groupby("d"):
                sub = sub.sort_values("n")
                ax.plot(sub["n"], sub[column], marker="o", ms=3, label=f"d={d}")
            ax.axhline(1.0 if log else 0.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            if log and (group[column] > 0).any():
                ax.set_yscale("log")
            ax.set_title(setting, fontsize=9)
            ax.set_xlabel("n stored pairs")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        for ax in axes[len(settings):]:
            ax.set_visible(False)
        written.append(save_figure(fig, fig_dir / name))
    return written


def build(c: Comparison, out: Path) -> tuple[Path, Path]:
    """Write compare.md, compare.html, cells.parquet and figures/ into ``out``."""
    import pyarrow as pa

    out.mkdir(parents=True, exist_ok=True)
    figures = draw(c, out / store.FIGURES)
    blocks = document(c, figures)
    store.atomic_write_parquet(out / "cells.parquet", pa.Table.from_pandas(c.cells, preserve_index=False))
    md, page = out / "compare.md", out / "compare.html"
    store.atomic_write_bytes(md, to_markdown(blocks).encode())
    store.atomic_write_bytes(page, to_html(blocks).encode())
    return md, page


def main(argv: list[str] | None = None) -> int:
    from bench.cli import OneLineParser

    parser = OneLineParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0, or 2 when the runs cannot be read or share no cells.")
    parser.add_argument("run_a", type=Path, help="the run to compare against (A)")
    parser.add_argument("run_b", type=Path, help="the run compared (B)")
    parser.add_argument("--out", type=Path, help="report directory (default results/compare/<A>-vs-<B>)")
    parser.add_argument("--metric-tol", type=float, default=METRIC_TOL,
                        help=f"absolute change of cos / acc (relative for dist) that flags a cell (default {METRIC_TOL:g})")
    parser.add_argument("--speed-tol", type=float, default=SPEED_TOL,
                        help=f"speed ratio beyond 1 + tol (or below 1 / (1 + tol)) that flags a cell (default {SPEED_TOL:g})")
    parser.add_argument("--min-time", type=float, default=MIN_TIME,
                        help=f"seconds per seed below which a cell's speed is not flagged (default {MIN_TIME:g})")
    args = parser.parse_args(argv)
    try:
        for flag in ("metric_tol", "speed_tol", "min_time"):
            value = getattr(args, flag)
            if not (math.isfinite(value) and value >= 0):
                raise CompareError(f"--{flag.replace('_', '-')} {value}: use a finite number >= 0")
        runs = []
        for path in (args.run_a, args.run_b):
            if not path.is_dir():
                raise CompareError(f"{path}: no such run directory; pass two run directories (e.g. results/<run id>)")
            run = rundir.read(path)
            if run.results is None or run.results.empty:
                raise CompareError(f"{path} has no results yet; finish it with `python run_all.py --resume {path}`")
            if (run.manifest.get("spec") or {}).get("nested"):
                raise CompareError(f"{path} is a nested-dictionary run; bench.compare joins memory-grid runs cell by "
                                   "cell (read the two nested reports side by side)")
            runs.append(run)
        comparison = compare(*runs, metric_tol=args.metric_tol, speed_tol=args.speed_tol, min_time=args.min_time)
    except (CompareError, store.StoreError) as e:
        print(f"bench.compare: error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / "compare" / f"{args.run_a.resolve().name}-vs-{args.run_b.resolve().name}"
    try:
        md, page = build(comparison, out)
    except OSError as e:
        print(f"bench.compare: error: cannot write the report to {out} ({e.strerror}); pass --out DIR you can "
              "write to", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(comparison)))
    print("\nper family (B / A):")
    print(text_table(comparison.families))
    flagged = comparison.cells[comparison.cells["flag"] != ""]
    if len(flagged):
        print(f"\nflagged cells ({len(flagged)}; first 30):")
        print(text_table(flagged[CELL_COLUMNS], 30))
    print(f"\ncomparison written to {page} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
