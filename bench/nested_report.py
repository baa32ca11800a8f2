"""Figures and the report of a nested-dictionary run (``run_all.py --nested``), from its parquet
alone, plus the learning experiment's curves (RUN_DIR/learning.parquet, measured once).

Figures: accuracy against depth and against branching per reader, the collision effect (form
collision against form independent at equal size), hierarchical against flat readers at equal
memory (accuracy against stored paths), capacity (the largest tree read at 99% accuracy)
against d, the soft read's weight on the true path and top-1's accuracy against their theory,
and the learning curves. The report states which reader wins where, with numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from bench import rundir, store
from bench.plots import save_figure
from bench.report import Block, about_facts, as_text, to_html, to_markdown

LEARNING = "learning.parquet"
CAPACITY_ACC = 0.99
LEARN_MODES = ("soft", "sparse", "topk")


def reader_name(row) -> str:
    """A reader and its knobs, e.g. 'topk k=4 beta=8', 'flat_pinv concat'."""
    parts = [row["mode"]]
    if _given(row.get("topk")):
        parts.append(f"k={int(row['topk'])}")
    if _given(row.get("composition")):
        parts.append(str(row["composition"]))
    if _given(row.get("beta")):
        parts.append(f"beta={row['beta']:g}")
    return " ".join(parts)


def _given(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


# What makes a tree shape (columns of a nested row); older runs lack the last two (read as the
# settings they ran at: sharing 0.5 in the dag form, fixed branching).
SHAPE = ["form", "depth", "branching", "collision", "sharing", "vary_branching", "d"]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per reader and tree shape (SHAPE), ok rows only."""
    ok = df[(df["kernel"] == "nested") & (df["status"] == "ok")].copy()
    for column in ("sharing", "vary_branching", "path_hit", "path_hit_theory", "path_hit_theory_low"):
        if column not in ok:
            ok[column] = None
    ok["vary_branching"] = ok["vary_branching"].fillna(False).astype(bool)
    ok["sharing"] = np.where(ok["form"] == "dag", ok["sharing"].astype(float).fillna(0.5), np.nan)
    ok["reader"] = [reader_name(r) for _, r in ok.iterrows()]
    keys = ["reader", "mode", "beta", "topk", "composition", *SHAPE]
    return ok.groupby(keys, dropna=False, sort=True).agg(
        n=("n", "mean"), acc=("acc", "mean"), cos=("cos_mean", "mean"), path_mass=("path_mass", "mean"),
        path_mass_theory=("path_mass_theory", "mean"), theory_acc=("theory_acc", "mean"),
        path_hit=("path_hit", "mean"), path_hit_theory=("path_hit_theory", "mean"),
        path_hit_theory_low=("path_hit_theory_low", "mean"), theory_cos=("theory_cos", "mean"),
        read_s=("read_s", "median"), flops=("flops", "mean"), compile_s=("compile_s", "sum"),
        seeds=("seed", "count")).reset_index()


def _colours(count: int):
    return matplotlib.colormaps["tab10" if count <= 10 else "tab20"](np.linspace(0, 1, max(count, 2)))


def _reference_form(s: pd.DataFrame) -> str:
    """The form the per-axis figures show: independent (non-factorisable) when it ran."""
    return "independent" if "independent" in set(s["form"]) else sorted(set(s["form"]))[0]


def _readers_at(s: pd.DataFrame, beta: float | None) -> pd.DataFrame:
    """Readers at one beta (readers that read no beta are always in)."""
    return s if beta is None else s[s["beta"].isna() | (s["beta"] == beta)]


def _axis_figure(s: pd.DataFrame, x: str, panel: str, title: str) -> Figure:
    panels = sorted(set(s[panel]))
    fig = Figure(figsize=(5 * len(panels) + 3, 4.8), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    readers = sorted(set(s["reader"]))
    colours = dict(zip(readers, _colours(len(readers))))
    for ax, value in zip(axes, panels):
        here = s[s[panel] == value]
        for reader, g in here.groupby("reader", sort=True):
            g = g.groupby(x)["acc"].mean()
            ax.plot(g.index, g.values, marker="o", color=colours[reader], label=reader,
                    linestyle="--" if reader.startswith(("flat", "stacked")) else "-")
        ax.set_title(f"{panel} = {value}")
        ax.set_xlabel(x)
        ax.set_xticks(sorted(set(here[x])))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("nearest-leaf accuracy")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    return fig


def _one_axis_figure(readers) -> tuple[Figure, Any, dict]:
    """A figure with one axis and a colour per reader."""
    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    readers = sorted(set(readers))
    return fig, fig.subplots(), dict(zip(readers, _colours(len(readers))))


def _finish(fig: Figure, ax, title: str, xlabel: str, ylabel: str = "nearest-leaf accuracy",
            accuracy: bool = True) -> Figure:
    """Labels, grid, the legend beside the axis and the title (accuracy: the y axis is [0, 1])."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if accuracy:
        ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    return fig


def _collision_figure(s: pd.DataFrame, title: str) -> Figure:
    fig, ax, colours = _one_axis_figure(s["reader"])
    for (reader, form), g in s.groupby(["reader", "form"], sort=True):
        g = g.groupby("depth")["acc"].mean()
        ax.plot(g.index, g.values, marker="o" if form == "independent" else "x", color=colours[reader],
                linestyle="-" if form == "independent" else ":", label=f"{reader} ({form})")
    return _finish(fig, ax, title, "depth")


def _size_figure(s: pd.DataFrame, title: str) -> Figure:
    """Accuracy against stored paths (the memory's size), every form and shape pooled."""
    fig, ax, colours = _one_axis_figure(s["reader"])
    for reader, g in s.groupby("reader", sort=True):
        g = g.sort_values("n")
        ax.plot(g["n"], g["acc"], marker=".", linestyle="none", color=colours[reader], alpha=0.5)
        binned = g.groupby(np.round(np.log2(g["n"].clip(lower=1)))).agg(n=("n", "mean"), acc=("acc", "mean"))
        ax.plot(binned["n"], binned["acc"], color=colours[reader], label=reader,
                linestyle="--" if reader.startswith(("flat", "stacked")) else "-")
    ax.set_xscale("log", base=2)
    return _finish(fig, ax, title, "stored paths n (mean over seeds)")


def capacity(s: pd.DataFrame) -> pd.DataFrame:
    """Per reader and d: the largest tree (mean stored paths) of the reference form read at
    >= CAPACITY_ACC mean accuracy, and the largest tried."""
    form = _reference_form(s)
    here = s[s["form"] == form]
    rows = []
    for (reader, d), g in here.groupby(["reader", "d"], sort=True):
        held = g[g["acc"] >= CAPACITY_ACC]
        rows.append(dict(reader=reader, d=int(d), form=form, capacity=float(held["n"].max()) if len(held) else 0.0,
                         largest_tried=float(g["n"].max()), held_at_largest=bool(len(held) and
                                                                                 held["n"].max() == g["n"].max())))
    return pd.DataFrame(rows)


def _capacity_figure(cap: pd.DataFrame) -> Figure:
    fig, ax, colours = _one_axis_figure(cap["reader"])
    for reader, colour in colours.items():
        g = cap[cap["reader"] == reader].sort_values("d")
        ax.plot(g["d"], g["capacity"].where(g["capacity"] > 0), marker="o", color=colour, label=reader)
        capped = g[g["held_at_largest"]]
        ax.plot(capped["d"], capped["capacity"], marker="^", markerfacecolor="none", linestyle="none", color=colour)
    ax.set_xscale("log", base=2)
    if (cap["capacity"] > 0).any():
        ax.set_yscale("log", base=2)
    else:
        ax.text(0.5, 0.5, f"no tree read at accuracy >= {CAPACITY_ACC}", transform=ax.transAxes, ha="center")
    return _finish(fig, ax, f"Capacity against d ({cap['form'].iloc[0]} form; open triangles: held at the largest tree "
                            "tried)", "d", f"largest tree read at accuracy >= {CAPACITY_ACC} (stored paths)",
                   accuracy=False)


# The quantities nested.theory predicts, in the order of the theory figure's panels.
THEORY_QUANTITIES = ("soft: weight on the true path", "top-1: accuracy", "top-k (k > 1): beam keeps the path",
                     "flat pinv: cosine (leverage)")
# How far outside the top-k bracket a mean over seeds may fall and still count as inside it.
BRACKET_SLACK = 0.02


def theory_table(s: pd.DataFrame) -> pd.DataFrame:
    """Measured against theory, per shape: the soft read's weight on the true path (mean field,
    p^m), top-1's accuracy (s^m, exact), the share of paths a wider beam keeps (between the
    pessimistic and the sibling-only product: ``low``, ``theory``) and the flat pinv memory's
    cosine (the mean sqrt(leverage) of its paths); the relative error against ``theory``."""
    picks = ((THEORY_QUANTITIES[0], "path_mass_theory", "path_mass", None),
             (THEORY_QUANTITIES[1], "theory_acc", "acc", None),
             (THEORY_QUANTITIES[2], "path_hit_theory", "path_hit", "path_hit_theory_low"),
             (THEORY_QUANTITIES[3], "theory_cos", "cos", None))
    rows = []
    for quantity, theory, measured, low in picks:
        g = s[s[theory].notna() & s[measured].notna()]
        if quantity == THEORY_QUANTITIES[2]:
            g = g[g["topk"] > 1]
        for _, r in g.iterrows():
            rows.append(dict(quantity=quantity, reader=r["reader"], form=r["form"], depth=r["depth"],
                             branching=r["branching"], d=r["d"], beta=r["beta"], measured=r[measured],
                             theory=r[theory], low=r[low] if low else r[theory]))
    out = pd.DataFrame(rows)
    if len(out):
        out["relative_error"] = (out["measured"] - out["theory"]) / out["theory"]
        out["inside"] = (out["measured"] >= out["low"] - BRACKET_SLACK) & (out["measured"] <= out["theory"] +
                                                                            BRACKET_SLACK)
    return out


def _theory_figure(t: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(20, 4.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(THEORY_QUANTITIES))
    for ax, quantity in zip(axes, THEORY_QUANTITIES):
        g = t[t["quantity"] == quantity]
        if len(g) and (g["low"] != g["theory"]).any():
            ax.errorbar(g["theory"], g["measured"], xerr=[g["theory"] - g["low"], 0 * g["theory"]], fmt="none",
                        ecolor="lightgrey", zorder=1)
        if len(g):
            ax.scatter(g["theory"], g["measured"], s=14, c=np.log2(g["d"]), cmap="viridis", zorder=2)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel("theory")
        ax.set_ylabel("measured (mean over seeds)")
        ax.set_title(quantity)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Theory against measurement (nested.theory; colour: log2 d; top-k: the bar reaches down to "
                 "the pessimistic product)")
    return fig


def measure_learning(run_dir: Path) -> pd.DataFrame:
    """The learning experiment (nested.learn, its documented defaults) for every mode, kept as
    RUN_DIR/learning.parquet; read back when it is already there."""
    path = run_dir / LEARNING
    if path.is_file():
        return pq.read_table(path).to_pandas()
    from nested import learn

    rows = []
    for mode in LEARN_MODES:
        curve = learn.learn(mode)
        for i, (loss, acc) in enumerate(zip(curve.loss, curve.accuracy)):
            rows.append(dict(mode=mode, step=min(i * 10, 150), loss=loss, accuracy=acc))
    table = pd.DataFrame(rows)
    store.atomic_write_parquet(path, pa.Table.from_pandas(table, preserve_index=False))
    return table


def _learning_figure(curves: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for mode, g in curves.groupby("mode", sort=True):
        axes[0].plot(g["step"], g["loss"], marker=".", label=mode)
        axes[1].plot(g["step"], g["accuracy"], marker=".", label=mode)
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].set_ylabel("accuracy (own leaf nearest)")
    for ax in axes:
        ax.set_xlabel("Adam step")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Learning a projection of rotated query paths through the read (collision form, depth 3, b 4, "
                 "d 16, beta 1, top-4 beam)")
    return fig


def base_shapes(s: pd.DataFrame) -> pd.DataFrame:
    """The rows the per-axis figures draw: fixed branching and the dag form's default sharing
    where a run also varied them (their effect has a table of its own: varied_axes)."""
    if (~s["vary_branching"]).any():
        s = s[~s["vary_branching"]]
    dag = s["form"] == "dag"
    if dag.any():
        keep = 0.5 if (s.loc[dag, "sharing"] == 0.5).any() else s.loc[dag, "sharing"].min()
        s = s[~dag | (s["sharing"] == keep)]
    return s


def varied_axes(s: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Accuracy per reader against the axes a run varied beyond the figures' base shapes: the
    dag form's sharing fraction and fixed against drawn branching (means over the other axes)."""
    out = []
    dag = s[s["form"] == "dag"]
    if dag["sharing"].nunique() > 1:
        out.append(("Sharing: accuracy per reader against the fraction of shared sub-dictionaries (dag form)",
                    dag.pivot_table(index="reader", columns="sharing", values="acc", aggfunc="mean").reset_index()))
    if s["vary_branching"].nunique() > 1:
        t = s.pivot_table(index="reader", columns="vary_branching", values="acc", aggfunc="mean")
        t.columns = ["fixed branching" if not v else "drawn 1..branching" for v in t.columns]
        out.append(("Drawn branching: accuracy per reader, every node holding --branching keys against nodes "
                    "drawing 1..branching", t.reset_index()))
    return out


def draw_all(run: rundir.Run, s: pd.DataFrame, curves: pd.DataFrame) -> list[Path]:
    fig_dir = run.figures_dir
    fig_dir.mkdir(exist_ok=True)
    written = []
    every, s = s, base_shapes(s)
    form = _reference_form(s)
    d = int(s["d"].max())
    betas = sorted(set(s["beta"].dropna())) or [None]
    for beta in betas:
        at = _readers_at(s[(s["form"] == form) & (s["d"] == d)], beta)
        tag = f"beta={beta:g}" if beta is not None else ""
        written.append(save_figure(_axis_figure(at, "depth", "branching", f"Accuracy against depth ({form} form, d "
                                                f"= {d}, {tag})"), fig_dir / f"nested_accuracy_vs_depth_{tag}"))
        written.append(save_figure(_axis_figure(at, "branching", "depth", f"Accuracy against branching ({form} form, "
                                                f"d = {d}, {tag})"), fig_dir / f"nested_accuracy_vs_branching_{tag}"))
    top = betas[-1]
    at_top = f", beta {top:g}" if top is not None else ""  # readers without beta (flat_pinv alone) have none
    pair = _readers_at(s[s["form"].isin(["independent", "collision"]) & (s["d"] == d)], top)
    if pair["form"].nunique() == 2:
        b = int(pair["branching"].max())
        written.append(save_figure(_collision_figure(pair[pair["branching"] == b], (
            f"The collision effect: inner keys shared across parents (collision, dotted) against fresh keys "
            f"(independent, solid); d = {d}, branching {b}{at_top}")), fig_dir / "nested_collision_effect"))
    written.append(save_figure(_size_figure(_readers_at(s, top), f"Hierarchical (solid) against flat (dashed) at equal "
                                            f"memory: every form and shape{at_top}"),
                               fig_dir / "nested_hierarchical_vs_flat"))
    written.append(save_figure(_capacity_figure(capacity(_readers_at(s, top))), fig_dir / "nested_capacity_vs_d"))
    t = theory_table(every)
    if len(t):
        written.append(save_figure(_theory_figure(t), fig_dir / "nested_theory"))
    written.append(save_figure(_learning_figure(curves), fig_dir / "nested_learning"))
    return written


def winners(s: pd.DataFrame) -> pd.DataFrame:
    """Per tree shape (SHAPE): the most accurate reader (ties: the fastest read), its accuracy,
    and the best hierarchical and flat accuracies."""
    rows = []
    for key, g in s.groupby(SHAPE, sort=True, dropna=False):
        g = g.sort_values(["acc", "read_s"], ascending=[False, True])
        hier = g[g["mode"].isin(("soft", "sparse", "topk"))]
        flat = g[~g["mode"].isin(("soft", "sparse", "topk"))]
        rows.append(dict(zip(SHAPE, key), winner=g["reader"].iloc[0],
                         acc=g["acc"].iloc[0], paths=g["n"].iloc[0],
                         best_hierarchical=hier["acc"].max() if len(hier) else math.nan,
                         best_flat=flat["acc"].max() if len(flat) else math.nan))
    return pd.DataFrame(rows)


def findings(s: pd.DataFrame, won: pd.DataFrame) -> list[str]:
    """Sentences with numbers: which reader wins where, and what reading level by level costs."""
    out = []
    counts = won["winner"].value_counts()
    out.append(f"Most accurate reader per tree shape ({len(won)} shapes; ties go to the faster read): " +
               ", ".join(f"{reader} {count}" for reader, count in counts.items()) + ".")
    diff = (won["best_hierarchical"] - won["best_flat"]).dropna()
    if len(diff):
        out.append(f"The best level-by-level reader beat the best flat reader on {int((diff > 0).sum())} shapes, tied on "
                   f"{int((diff == 0).sum())} and lost on {int((diff < 0).sum())} (accuracy difference "
                   f"{diff.min():+.3f} to {diff.max():+.3f}).")
    for form, g in won.groupby("form", sort=True):
        out.append(f"Form {form}: best hierarchical accuracy {g['best_hierarchical'].mean():.3f}, best flat "
                   f"{g['best_flat'].mean():.3f} (means over its shapes).")
    pair = s[s["form"].isin(["independent", "collision"])]
    if pair["form"].nunique() == 2:
        by = pair.groupby(["mode", "form"])["acc"].mean().unstack()
        drops = (by["independent"] - by["collision"]).sort_values()
        out.append("Collision effect (accuracy, independent minus collision form, mean over shapes): " +
                   ", ".join(f"{mode} {v:+.3f}" for mode, v in drops.items()) + ".")
    largest = s[s["n"] == s.groupby("mode")["n"].transform("max")]
    speed = largest.groupby("reader")["read_s"].median().sort_values()
    if "soft" in set(s["mode"]) and "topk" in set(s["mode"]):
        big = s[(s["depth"] == s["depth"].max()) & (s["branching"] == s["branching"].max()) & (s["d"] == s["d"].max())]
        soft_s, topk_s = big[big["mode"] == "soft"]["read_s"].median(), big[big["mode"] == "topk"]["read_s"].median()
        out.append(f"On the largest trees (depth {int(big['depth'].max())}, branching {int(big['branching'].max())}, "
                   f"d = {int(big['d'].max())}) a batch of reads took {soft_s * 1e3:.2f} ms soft and "
                   f"{topk_s * 1e3:.2f} ms top-k (median; {soft_s / topk_s:.1f}x). At sweep sizes fixed costs "
                   "weigh; the million-leaf measurement is in the README.")
    if len(speed):
        out.append("Fastest readers at their largest trees (median read per batch): " +
                   ", ".join(f"{r} {v * 1e3:.2f} ms" for r, v in speed.head(4).items()) + ".")
    return out


def document(run: rundir.Run, s: pd.DataFrame, curves: pd.DataFrame) -> list[Block]:
    df = run.results
    won = winners(s)
    by_form = s.pivot_table(index="reader", columns="form", values="acc", aggfunc="mean")
    by_form.insert(0, "mean", by_form.mean(axis=1))
    by_form = by_form.sort_values("mean", ascending=False).reset_index()
    big = s[(s["depth"] == s["depth"].max()) & (s["branching"] == s["branching"].max()) & (s["d"] == s["d"].max())]
    timing = big.groupby("reader").agg(paths=("n", "mean"), read_ms=("read_s", lambda v: 1e3 * float(np.median(v))),
                                       flops_per_batch=("flops", "median")).reset_index()
    timing["gflops"] = timing["flops_per_batch"] / (timing["read_ms"] / 1e3) / 1e9
    timing = timing.merge(s.groupby("reader")["compile_s"].sum().reset_index(), on="reader").sort_values("read_ms")
    final = curves.sort_values("step").groupby("mode").agg(first_loss=("loss", "first"), last_loss=("loss", "last"),
                                                           first_acc=("accuracy", "first"),
                                                           last_acc=("accuracy", "last")).reset_index()
    t = theory_table(s)
    blocks = [Block("title", "Nested dictionaries read by attention: benchmark report"),
              Block("heading", "What ran, and on what"), Block("facts", about_facts(run.manifest, df)),
              Block("paragraph", "Each cell: one generated tree per seed (nested.generate), Gaussian codebooks of d "
                                 "coordinates for keys and values, up to --queries readable paths queried exactly. "
                                 "Readers: soft / sparse / topk (level by level, kernels.nested), flat_attention and "
                                 "flat_pinv (every path as one composite key), stacked (depth reads over one memory "
                                 "of every level's slots). Accuracy: the read value's nearest stored value is its "
                                 "own leaf's."),
              Block("heading", "Which reader wins where"), Block("paragraph", " ".join(findings(s, won))),
              Block("table", as_text(won)),
              Block("heading", "Accuracy by reader and form (mean over depth, branching, collision, d)"),
              Block("table", as_text(by_form)),
              Block("heading", "Timings per reader"),
              Block("paragraph", f"On the largest trees (depth {int(big['depth'].max())}, branching "
                                 f"{int(big['branching'].max())}, d = {int(big['d'].max())}; paths: mean stored per "
                                 "tree): read_ms is the median time of one batch of path reads (compiled, after "
                                 "compilation), GFLOP/s from analytic FLOPs at the padded sizes the program "
                                 "computes; compile_s is summed over the reader's programs at every size."),
              Block("table", as_text(timing)),
              Block("heading", f"Capacity: the largest tree read at accuracy >= {CAPACITY_ACC}"),
              Block("table", as_text(capacity(base_shapes(s))))]
    for title, table in varied_axes(s):
        blocks += [Block("heading", title), Block("table", as_text(table))]
    if len(t):
        beam = t[t["quantity"] == THEORY_QUANTITIES[2]]
        inside = (f" The beam's measured share lies inside its bracket (+-{BRACKET_SLACK}) on "
                  f"{int(beam['inside'].sum())} of {len(beam)} shapes." if len(beam) else "")
        blocks += [Block("heading", "Theory against measurement"),
                   Block("paragraph", "Soft: mean-field weight on the true path p^m, p = 1 / (1 + (b - 1) exp(beta^2 / "
                                      "2d - beta)). Top-1: the product over the path's levels of s(c) = "
                                      "E[Phi(sqrt(x))^c], x ~ chi2(d), c the competing siblings (those that nest "
                                      "above the last key, every other slot at it). A beam of k: between the "
                                      "product of s_k(c) = E[P(Binomial(c, 1 - Phi(sqrt(x))) <= k - 1)] (its "
                                      "siblings only: an upper bound) and the same with every beam candidate a "
                                      "sibling (pessimistic). Flat pinv: mean of sqrt(h_i), h_i the leverage of "
                                      "path i among the P stored composite keys C (at most sqrt(rank C / P); every "
                                      "path exact when rank C = P, the flat memory's bundling capacity; forms whose "
                                      "paths have values of their own). The first three for dot-product scores of exact queries "
                                      "(nested.theory); the mean field holds where the siblings' sum concentrates "
                                      "(large b, beta small against sqrt(d)). |relative error| to the (upper) "
                                      "theory, median / largest: " + "; ".join(
                                          f"{q} {g.abs().median():.3f} / {g.abs().max():.3f}"
                                          for q, g in t.groupby("quantity")["relative_error"]) + "." + inside),
                   Block("table", as_text(t.groupby(["quantity", "depth", "branching", "d", "beta"], dropna=False)[
                       ["measured", "theory", "low", "relative_error"]].mean().reset_index()))]
    blocks += [Block("heading", "Learning through the read"),
               Block("paragraph", "A linear projection of the query path learned by Adam (nested.learn) so that rotated "
                                  "collision-form paths retrieve their own leaf; loss and accuracy at the first and "
                                  "last step."),
               Block("table", as_text(final))]
    problems = df[df["status"] != "ok"]
    if len(problems):
        blocks += [Block("heading", "Cells that did not run cleanly"),
                   Block("table", as_text(problems[["form", "depth", "branching", "d", "mode", "seed", "status",
                                                    "error"]].head(50)))]
    blocks.append(Block("heading", "Figures"))
    blocks += [Block("figure", p) for p in run.figures()]
    return blocks


def build(run: rundir.Run) -> tuple[Path, Path]:
    """Figures, the learning curves and report.md / report.html of a nested run."""
    s = summarize(run.results)
    if not len(s):
        raise store.StoreError(f"{run.path} has no finished nested cells; resume it first")
    curves = measure_learning(run.path)
    draw_all(run, s, curves)
    blocks = document(run, s, curves)
    md_path, html_path = run.path / "report.md", run.path / "report.html"
    store.atomic_write_bytes(md_path, to_markdown(blocks).encode())
    store.atomic_write_bytes(html_path, to_html(blocks).encode())
    return html_path, md_path
