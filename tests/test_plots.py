"""Figures and the summaries behind them, from synthetic run tables (no JAX run): the mean and
band over seeds, the grid capacity, which figures a run gets, what each draws, and the same
bytes for the same data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench import plots, rundir, store, summaries


def _rows(**columns) -> pd.DataFrame:
    """A run table in the store's schema: the given columns, every other one null."""
    n = len(next(iter(columns.values())))
    frame = {name: columns.get(name, [None] * n) for name in store.SCHEMA.names}
    return store.rows_to_table(pd.DataFrame(frame).to_dict("records")).to_pandas()


def _grid(kernel="pinv", ds=(8, 16), ns=(4, 8, 16, 32), seeds=3, patterns="gaussian", **knobs) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [dict(kernel=kernel, d=d, n=n, dv=d, seed=s, noise=0.0, mask=0.0, patterns=patterns, dtype="float32",
                 cos_mean=float(min(1.0, d / n) - 0.01 * rng.random()), dist_mean=float(n / d),
                 acc=1.0 if n <= d else 0.5, baseline_cos=0.0, baseline_dist=math.sqrt(2 * d),
                 theory_cos=float(min(1.0, math.sqrt(d / n))) if kernel == "pinv" else None, status="ok", **knobs)
            for d in ds for n in ns for s in range(seeds)]
    return _rows(**{k: [r[k] for r in rows] for k in rows[0]})


def test_summary_is_the_mean_and_a_t_interval_over_seeds():
    df = _rows(kernel=["hebbian"] * 4, d=[8] * 4, n=[4] * 4, seed=[0, 1, 2, 3], noise=[0.0] * 4, mask=[0.0] * 4,
               patterns=["gaussian"] * 4, dtype=["float32"] * 4, cos_mean=[0.5, 0.6, 0.7, 9.0],
               dist_mean=[1.0] * 4, acc=[1.0] * 4, status=["ok", "ok", "ok", "nan"])
    row = summaries.summarize(df).iloc[0]
    assert row["seeds"] == 3 and row["cos"] == pytest.approx(0.6)  # the NaN row is not averaged in
    assert row["cos_ci"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))  # t(0.975, 2 dof) * sd / sqrt(seeds)
    assert row["acc_ci"] == 0.0


@pytest.mark.parametrize("holds, expected", [
    ([True, True, True, True], ">= 32"), ([False, True, True, True], "< 4"), ([True, True, False, True], "8"),
])
def test_grid_capacity_is_the_largest_n_before_the_first_failure(holds, expected):
    ns = [4, 8, 16, 32]
    df = _rows(kernel=["hebbian"] * 4, d=[16] * 4, n=ns, seed=[0] * 4, noise=[0.0] * 4, mask=[0.0] * 4,
               patterns=["gaussian"] * 4, dtype=["float32"] * 4, cos_mean=[0.95 if h else 0.5 for h in holds],
               dist_mean=[0.0] * 4, acc=[1.0 if h else 0.2 for h in holds], status=["ok"] * 4)
    row = summaries.capacity_table(df).iloc[0]
    assert row["n_cos"] == expected and row["n_acc"] == expected and row["setting"] == "hebbian noise=0"


def test_setting_names_say_what_differs_from_the_default():
    row = dict(kernel="ridge", lam=0.01, noise=0.1, mask=0.25, patterns="glove", dtype="float64")
    assert summaries.setting_name(row) == "ridge lam=0.01 noise=0.1 mask=0.25 glove float64"


def test_a_setting_figure_draws_mean_band_baseline_and_theory_per_d():
    summary = summaries.summarize(_grid())
    group = summary[summary["kernel"] == "pinv"]
    fig = plots._setting_figure(group, "pinv noise=0")
    cos_ax, dist_ax, acc_ax = fig.axes
    styles = [line.get_linestyle() for line in cos_ax.lines]
    # per d: the mean, the baseline and the theory; plus the 0.9 threshold line
    assert styles.count("-") == 3 and styles.count("--") == 2 and styles.count(":") == 2
    assert sorted(line.get_label() for line in cos_ax.lines if line.get_label().startswith("d=")) == ["d=16", "d=8"]
    mean_d8 = next(line for line in cos_ax.lines if line.get_label() == "d=8")
    np.testing.assert_allclose(mean_d8.get_ydata(), group[group.d == 8].sort_values("n")["cos"])
    assert len(cos_ax.collections) == 2 and cos_ax.get_xscale() == "log"
    assert [line.get_linestyle() for line in acc_ax.lines].count(":") == 0  # no theory for the accuracy
    hebbian = summaries.summarize(_grid(kernel="hebbian"))
    no_theory = plots._setting_figure(hebbian.assign(theory_cos=np.nan), "hebbian")
    assert [line.get_linestyle() for line in no_theory.axes[0].lines].count(":") == 0


def _synthetic_run(tmp_path) -> rundir.Run:
    df = pd.concat([_grid(), _grid(patterns="glove"),
                    _grid(kernel="attention", similarity="dot", separation="softmax", beta=1.0, heads=1, steps=1)],
                   ignore_index=True)
    curve = pd.DataFrame({"beta": [1.0, 10.0], "similarity": ["dot"] * 2, "queries": [8, 8], "right": [0.5, 0.9],
                          "wrong_stored": [0.25, 0.1], "hallucinated": [0.25, 0.0]})
    found = pd.DataFrame([{**{k: None for k in store.CAPACITY_SCHEMA.names}, "kernel": "pinv", "patterns": "gaussian",
                           "dtype": "float32", "noise": 0.0, "mask": 0.0, "d": d, "dv": d, "threshold": 0.99,
                           "max_n": 64, "capacity": d, "capped": d == 16, "theory_scale": float(d)} for d in (8, 16)])
    return rundir.Run(tmp_path, {}, df, found, curve)


def test_a_run_gets_one_figure_per_setting_and_the_comparisons_the_same_bytes_each_time(tmp_path):
    run = _synthetic_run(tmp_path)
    names = sorted(p.name for p in plots.draw_all(run))
    assert names == sorted([
        "pinv_noise=0.png", "pinv_noise=0_glove.png", "attention_dot_softmax_beta=1_noise=0.png",
        "pinv_patterns_compared__noise=0.png", "matrix_vs_attention_d=8.png", "fuzzy_kv_hallucination.png",
        "capacity_vs_d.png"])
    assert all((tmp_path / store.FIGURES / n.replace(".png", ".svg")).is_file() for n in names)
    first = {p.name: p.read_bytes() for p in run.figures_dir.iterdir()}
    plots.save_figure(plots.capacity_figure(run.capacity), run.figures_dir / "capacity_vs_d")  # drawn again
    assert {p.name: p.read_bytes() for p in run.figures_dir.iterdir()} == first
    assert b"Date" not in first["capacity_vs_d.svg"]  # no timestamp in the files


def test_capacity_figure_marks_capped_searches_as_lower_bounds(tmp_path):
    fig = plots.capacity_figure(_synthetic_run(tmp_path).capacity)
    ax = fig.axes[0]
    open_triangles = [line for line in ax.lines if line.get_marker() == "^" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in open_triangles] == [[16]]  # only the search that hit the cap
    assert ax.get_yscale() == "log"
