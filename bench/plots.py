"""Figures and the capacity table, drawn from a run's parquet alone.

One figure per memory setting (kernel, its knobs, noise): cosine similarity, distance and
accuracy against n (log scale), one colour per d, the mean over seeds with a 95% band, the
random baseline dashed and the theory dotted. Matplotlib's object API only (no pyplot
state), and no timestamps in the files: the same data gives the same bytes.

    python -m bench.plots RUN_DIR      # re-draw RUN_DIR/figures/
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench import rundir, store

from bench.summaries import (ACC_THRESHOLD, COS_THRESHOLD, SETTING_COLUMNS, memory_name, setting_name,
                             summarize)

def draw_all(run: rundir.Run) -> list[Path]:
    """Draw every figure of a run into RUN_DIR/figures (PNG and SVG); returns the PNG paths."""
    fig_dir = run.figures_dir
    fig_dir.mkdir(exist_ok=True)
    summary = summarize(run.results)
    written = []
    for key, group in summary.groupby(SETTING_COLUMNS, dropna=False, sort=True):
        setting = dict(zip(SETTING_COLUMNS, key))
        name = setting_name(setting)
        fig = _setting_figure(group, name)
        written.append(save_figure(fig, fig_dir / _file_name(name)))
    # Distributions side by side (e.g. GloVe word vectors against Gaussian keys of the same d).
    others = [c for c in SETTING_COLUMNS if c != "patterns"]
    for key, group in summary.groupby(others, dropna=False, sort=True):
        if group["patterns"].nunique() > 1:
            setting = dict(zip(others, key), patterns="gaussian")
            name = setting_name(setting).replace("noise=", "patterns compared, noise=")
            written.append(save_figure(_patterns_figure(group, name), fig_dir / _file_name(name)))
    side = _side_by_side_d(summary)
    if side is not None:
        group = summary[(summary["d"] == side) & (summary["noise"] == 0) & (summary["patterns"] == "gaussian")
                        & ~(summary["mask"].fillna(0) > 0)]
        written.append(save_figure(_memories_figure(group, side), fig_dir / f"matrix_vs_attention_d={side}"))
    if run.hallucination is not None:
        written.append(save_figure(_hallucination_figure(run.hallucination), fig_dir / "fuzzy_kv_hallucination"))
    if run.capacity is not None and len(run.capacity):
        written.append(save_figure(capacity_figure(run.capacity), fig_dir / "capacity_vs_d"))
    return written


def _side_by_side_d(summary: pd.DataFrame) -> int | None:
    """The d at which matrix and attention memories are compared: the smallest d both ran
    (noise-free Gaussian cells; there attention also degrades within the grid), or None when
    only one family ran."""
    clean = summary[(summary["noise"] == 0) & (summary["patterns"] == "gaussian")]
    attention = set(clean.loc[clean["kernel"] == "attention", "d"])
    matrix = set(clean.loc[clean["kernel"] != "attention", "d"])
    common = sorted(attention & matrix)
    return int(common[0]) if common else None


def _cos_acc_figure(width: float, title: str):
    """A figure with the cosine (left) and accuracy (right) panels against log n, and the
    (axis, metric) pairs for the caller to draw into."""
    fig = Figure(figsize=(width, 4.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, label in zip(axes, ["cosine similarity (recalled, true)", "nearest-neighbour accuracy"]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stored pairs n")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    return fig, list(zip(axes, ("cos", "acc")))


def _memories_figure(group: pd.DataFrame, d: int) -> Figure:
    fig, panels = _cos_acc_figure(12, f"matrix (solid) and attention (dashed) memories side by side, d={d}, "
                                      "exact queries")
    names = sorted({memory_name(r) for _, r in group.iterrows()})
    colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, max(len(names), 2)))
    for ax, metric in panels:
        for colour, name in zip(colours, names):
            g = group[group.apply(memory_name, axis=1) == name].sort_values("n")
            style = "--o" if g["kernel"].iloc[0] == "attention" else "-s"
            ax.plot(g["n"], g[metric], style, color=colour, ms=3, lw=1.3, label=name)
    panels[1][0].axhline(ACC_THRESHOLD, color="grey", lw=0.8, alpha=0.6)
    panels[0][0].legend(fontsize=7)
    return fig


def capacity_figure(found: pd.DataFrame) -> Figure:
    """Capacity against d on log-log axes, one line per setting: filled markers where the
    search found the capacity, open triangles where it reached the cap (a lower bound); the
    analytic scale dotted (bench.theory.capacity_scale; a scale, not the exact n at the
    threshold)."""
    fig = Figure(figsize=(8, 5.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    names = [setting_name(r) for _, r in found.iterrows()]
    found = found.assign(setting=names)
    settings = sorted(set(names))
    colours = matplotlib.colormaps["tab10" if len(settings) <= 10 else "tab20"](np.linspace(0, 1, max(len(settings), 2)))
    cap = int(found["max_n"].max())
    for colour, name in zip(colours, settings):
        g = found[found["setting"] == name].sort_values("d")
        shown = g["capacity"].where(g["capacity"] > 0)
        ax.plot(g["d"], shown, "-", color=colour, lw=1.3, label=name)
        ax.plot(g.loc[~g["capped"], "d"], shown[~g["capped"]], "o", color=colour, ms=5)
        ax.plot(g.loc[g["capped"], "d"], shown[g["capped"]], "^", color=colour, ms=7, mfc="none")
        theory = g["theory_scale"].astype(float).clip(upper=cap * 4)
        if theory.notna().any():
            ax.plot(g["d"], theory, ":", color=colour, lw=1.6)
    ax.axhline(cap, color="grey", lw=0.8, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("key dimension d")
    ax.set_ylabel(f"capacity: largest n with accuracy >= {found['threshold'].iloc[0]:g}")
    ax.grid(True, which="major", alpha=0.3)
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="k", marker="^", mfc="none", ls=""), Line2D([], [], color="k", ls=":", lw=1.6)]
    labels += [f"reached the cap {cap} (a lower bound)", "theory scale"]
    ax.legend(handles, labels, fontsize=7)
    ax.set_title("capacity search (doubling, then bisection)")
    return fig


def _patterns_figure(group: pd.DataFrame, title: str) -> Figure:
    fig, panels = _cos_acc_figure(11, title)
    ds = sorted(group["d"].unique())
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(ds), 1)))
    styles = ["-o", "--s", ":^", "-.v"]
    for ax, metric in panels:
        for style, patterns in zip(styles, sorted(group["patterns"].unique())):
            for colour, d in zip(colours, ds):
                g = group[(group["d"] == d) & (group["patterns"] == patterns)].sort_values("n")
                ax.plot(g["n"], g[metric], style, color=colour, ms=3, lw=1.3, label=f"{patterns}, d={d}")
    panels[0][0].legend(fontsize=7)
    return fig


def _hallucination_figure(curve: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6.5, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for column, label, style in (("right", "right category (stored)", "-o"),
                                 ("wrong_stored", "another stored value", "-s"),
                                 ("hallucinated", "never stored (hallucinated)", "-^")):
        ax.plot(curve["beta"], curve[column], style, ms=4, label=label)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("inverse temperature beta")
    ax.set_ylabel(f"fraction of top-1 answers ({int(curve['queries'].iloc[0])} held-out words)")
    ax.set_title("fuzzy key-value store over GloVe 6B 50-d")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _setting_figure(group: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(15, 4.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    ds = sorted(group["d"].unique())
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(ds), 1)))
    panels = [("cos", "cosine similarity (recalled, true)", "baseline_cos", "theory_cos", (-1, 1)),
              ("dist", "euclidean distance (recalled, true)", "baseline_dist", None, (0, np.inf)),
              ("acc", "nearest-neighbour accuracy", None, None, (0, 1))]
    for ax, (metric, label, baseline, theory, (lo, hi)) in zip(axes, panels):
        for colour, d in zip(colours, ds):
            g = group[group["d"] == d].sort_values("n")
            n = g["n"].to_numpy()
            mean, ci = g[metric].to_numpy(), g[f"{metric}_ci"].to_numpy()
            ax.plot(n, mean, "-o", color=colour, ms=3, lw=1.4, label=f"d={d}")
            # The band is clipped to the metric's range: with few seeds a t interval overshoots it.
            ax.fill_between(n, np.clip(mean - ci, lo, hi), np.clip(mean + ci, lo, hi), color=colour, alpha=0.2, lw=0)
            if baseline:
                ax.plot(n, g[baseline].to_numpy(), "--", color=colour, lw=1, alpha=0.8)
            if theory and g[theory].notna().any():
                ax.plot(n, g[theory].to_numpy(dtype=float), ":", color=colour, lw=1.6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stored pairs n")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    axes[2].axhline(ACC_THRESHOLD, color="grey", lw=0.8, alpha=0.6)
    axes[0].axhline(COS_THRESHOLD, color="grey", lw=0.8, alpha=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color="k", ls="--", lw=1), Line2D([], [], color="k", ls=":", lw=1.6)]
    labels += ["random baseline", "theory"]
    axes[0].legend(handles, labels, fontsize=8, loc="best")
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, stem: Path) -> Path:
    """Write ``stem``.png and .svg (atomically, free of timestamps); returns the PNG path."""
    with matplotlib.rc_context({"svg.hashsalt": "associative-memory-bench", "svg.fonttype": "path"}):
        for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, metadata=metadata)
            store.atomic_write_bytes(stem.parent / f"{stem.name}.{fmt}", buffer.getvalue())
            # The SVG keeps the layout the PNG's draw computed: the constrained layout was
            # most of a figure's time, and computed again for the second file.
            fig.set_layout_engine("none")
    return stem.parent / f"{stem.name}.png"


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-" else "_" for c in name)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.plots", description="Re-draw a run's figures from its parquet.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        run = rundir.read(args.run_dir)
        if (run.manifest.get("spec") or {}).get("nested"):
            from bench import nested_report

            s = nested_report.summarize(run.results)
            paths = nested_report.draw_all(run, s, nested_report.measure_learning(run.path))
        else:
            paths = draw_all(run)
    except store.StoreError as e:
        print(f"bench.plots: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(paths)} figures written to {args.run_dir / store.FIGURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
