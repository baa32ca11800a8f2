"""Summaries of a run's rows that both the figures and the report show: names of settings,
means over seeds with confidence bands, capacities on the grid, timings. Pandas in, pandas out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.store import SETTING_FIELDS
from kernels.names import memory_label

COS_THRESHOLD = 0.9
ACC_THRESHOLD = 0.99
SETTING_COLUMNS = list(SETTING_FIELDS)
# Two-sided 97.5% Student t quantiles for 1..30 degrees of freedom (normal beyond).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def memory_name(row) -> str:
    """The memory and the knobs it reads, e.g. 'attention scaled_dot topk beta=1 topk=8'."""
    return memory_label(row["kernel"], row)


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


def timing_table(df: pd.DataFrame, matmul_gflops: float | None) -> pd.DataFrame:
    """Per family (a memory setting and d): cells, compile and run seconds, achieved GFLOP/s
    and its share of the matmul rate measured in the same process."""
    ok = df[df["status"].isin(["ok", "nan"])]
    keys = SETTING_COLUMNS + ["d"]
    t = ok.groupby(keys, dropna=False).agg(cells=("cell_id", "nunique"), compile_s=("compile_s", "sum"),
                                           run_s=("run_s", "sum"), flops=("flops", "sum")).reset_index()
    t.insert(0, "setting", [setting_name(row) for _, row in t.iterrows()])
    t["gflops"] = t["flops"] / t["run_s"].where(t["run_s"] > 0) / 1e9
    t["of_matmul"] = t["gflops"] / matmul_gflops if matmul_gflops else float("nan")
    return t[["setting", "d", "cells", "compile_s", "run_s", "flops", "gflops", "of_matmul"]]


def _num(x) -> str:
    return f"{float(x):g}"
