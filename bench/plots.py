"""Figures and the capacity table, drawn from a run's parquet alone.

One figure per memory setting (kernel, its knobs, noise): cosine similarity, distance and
accuracy against n (log scale), one colour per d, the mean over seeds with a 95% band, the
random baseline dashed and the theory dotted. Matplotlib's object API only (no pyplot
state), and no timestamps in the files: the same data gives the same bytes.

    python -m bench.plots RUN_DIR      # re-draw RUN_DIR/figures/
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench import store

FIGURES = "figures"
COS_THRESHOLD = 0.9
ACC_THRESHOLD = 0.99
SETTING_COLUMNS = list(store.SETTING_FIELDS)
_KNOB_COLUMNS = ("lam", "eta", "passes", "similarity", "separation", "beta", "topk", "degree", "heads", "steps")
# Two-sided 97.5% Student t quantiles for 1..30 degrees of freedom (normal beyond).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def memory_name(row) -> str:
    """The memory and the knobs it reads, e.g. 'attention scaled_dot topk beta=1 topk=8'."""
    parts = [str(row["kernel"])]
    for knob in _KNOB_COLUMNS:
        value = row.get(knob)
        if not _given(value) or (knob in ("heads", "steps") and int(value) == 1):
            continue
        parts.append(str(value) if knob in ("similarity", "separation") else f"{knob}={_num(value)}")
    return " ".join(parts)


def setting_name(row) -> str:
    parts = [memory_name(row), f"noise={_num(row['noise'])}"]
    if _given(row.get("mask")) and row["mask"] > 0:
        parts.append(f"mask={_num(row['mask'])}")
    if row["patterns"] != "gaussian":
        parts.append(str(row["patterns"]))
    if row["dtype"] != "float32":
        parts.append(str(row["dtype"]))
    return " ".join(parts)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% half-width over seeds per (setting, d, n), ok rows only."""
    ok = df[df["status"] == "ok"]
    keys = SETTING_COLUMNS + ["d", "n"]
    grouped = ok.groupby(keys, dropna=False)
    out = grouped.agg(cos=("cos_mean", "mean"), cos_sd=("cos_mean", "std"), dist=("dist_mean", "mean"),
                      dist_sd=("dist_mean", "std"), acc=("acc", "mean"), acc_sd=("acc", "std"),
                      seeds=("seed", "count"), baseline_cos=("baseline_cos", "mean"),
                      baseline_dist=("baseline_dist", "mean"), theory_cos=("theory_cos", "first")).reset_index()
    t = out["seeds"].map(lambda s: _T975[s - 2] if 2 <= s <= 31 else (1.96 if s > 31 else 0.0))
    for m in ("cos", "dist", "acc"):
        out[f"{m}_ci"] = (t * out[f"{m}_sd"].fillna(0) / np.sqrt(out["seeds"])).fillna(0)
    return out


def capacity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, d): the largest n of the grid up to which (at that n and every smaller
    one) the seed-mean cosine stays >= 0.9 and the accuracy >= 0.99. A value at the grid's
    largest n is reported as ">= n"; none as "< smallest n"."""
    summary = summarize(df)
    rows = []
    for key, group in summary.groupby(SETTING_COLUMNS + ["d"], dropna=False, sort=True):
        group = group.sort_values("n")
        row = dict(zip(SETTING_COLUMNS + ["d"], key))
        row["setting"] = setting_name(row)
        row["n_cos"] = _largest(group, group["cos"] >= COS_THRESHOLD)
        row["n_acc"] = _largest(group, group["acc"] >= ACC_THRESHOLD)
        rows.append(row)
    return pd.DataFrame(rows, columns=SETTING_COLUMNS + ["d", "setting", "n_cos", "n_acc"])


def _largest(group: pd.DataFrame, holds: pd.Series) -> str:
    ns = group["n"].to_numpy()
    holds = holds.to_numpy()
    if not holds[0]:
        return f"< {ns[0]}"
    last = len(holds) if holds.all() else int(np.argmin(holds))
    return f">= {ns[-1]}" if last == len(holds) else str(ns[last - 1])


def draw_all(run_dir: Path) -> list[Path]:
    """Draw every figure of a run into RUN_DIR/figures (PNG and SVG); returns the PNG paths."""
    df = store.load_results(run_dir)
    fig_dir = run_dir / FIGURES
    fig_dir.mkdir(exist_ok=True)
    summary = summarize(df)
    written = []
    for key, group in summary.groupby(SETTING_COLUMNS, dropna=False, sort=True):
        setting = dict(zip(SETTING_COLUMNS, key))
        name = setting_name(setting)
        fig = _setting_figure(group, name)
        written.append(_save(fig, fig_dir / _file_name(name)))
    # Distributions side by side (e.g. GloVe word vectors against Gaussian keys of the same d).
    others = [c for c in SETTING_COLUMNS if c != "patterns"]
    for key, group in summary.groupby(others, dropna=False, sort=True):
        if group["patterns"].nunique() > 1:
            setting = dict(zip(others, key), patterns="gaussian")
            name = setting_name(setting).replace("noise=", "patterns compared, noise=")
            written.append(_save(_patterns_figure(group, name), fig_dir / _file_name(name)))
    side = _side_by_side_d(summary)
    if side is not None:
        group = summary[(summary["d"] == side) & (summary["noise"] == 0) & (summary["patterns"] == "gaussian")
                        & ~(summary["mask"].fillna(0) > 0)]
        written.append(_save(_memories_figure(group, side), fig_dir / f"matrix_vs_attention_d={side}"))
    from bench import hallucination

    curve = hallucination.load(run_dir)
    if curve is not None:
        written.append(_save(_hallucination_figure(curve), fig_dir / "fuzzy_kv_hallucination"))
    found = store.load_capacity(run_dir)
    if found is not None and len(found):
        written.append(_save(capacity_figure(found), fig_dir / "capacity_vs_d"))
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


def _save(fig: Figure, stem: Path) -> Path:
    with matplotlib.rc_context({"svg.hashsalt": "associative-memory-bench", "svg.fonttype": "path"}):
        for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, metadata=metadata)
            store.atomic_write_bytes(stem.parent / f"{stem.name}.{fmt}", buffer.getvalue())
    return stem.parent / f"{stem.name}.png"


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-" else "_" for c in name)


def _num(x) -> str:
    return f"{float(x):g}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.plots", description="Re-draw a run's figures from its parquet.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        paths = draw_all(args.run_dir)
    except store.StoreError as e:
        print(f"bench.plots: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(paths)} figures written to {args.run_dir / FIGURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
