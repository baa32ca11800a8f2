"""The run report: report.md and a self-contained report.html (figures embedded), from the
run's parquet, manifest and figures alone.

    python -m bench.report RUN_DIR     # rebuild RUN_DIR/report.html and report.md
"""

from __future__ import annotations

import base64
import html
import sys
from pathlib import Path

import pandas as pd

from bench import plots, store


THEORY_NOTE = (
    "Theory where it is approximate: pinv, hebbian and ridge curves are large-d limits (within 0.01 for d >= 64, "
    "n >= 2d). Softmax attention uses a mean-field weight on the right key, p = 1 / (1 + (n-1) exp(beta^2 sigma^2 / 2 "
    "- beta mu)), and cos = 1 / sqrt(1 + (n-1) exp(2 beta^2 sigma^2 - 2 beta mu)) (averaged over the key norm for "
    "Gaussian keys); it is drawn only where n - 1 >= exp(4 beta^2 sigma^2), where the sum over the other keys "
    "concentrates. Linear attention (identity) is the Hebbian memory. Top-k, polynomial, word vectors, masks, "
    "several heads or steps: no curve.")
SEARCH_NOTE = (
    "For each setting and d: doubling n from the first probe (k for top-k), then bisection to 1/32 of n, each probe "
    "with the same seeds; the capacity is the largest probed n whose mean accuracy over seeds held. '>= cap' means "
    "it held at --max-n. Theory scale (bench.theory.capacity_scale): d for pinv; for softmax the n where the "
    "mean-field weight on the right key falls to 1/2 (exponential in beta mu: in d for the raw dot product of "
    "Gaussian keys, in sqrt(d) when scaled); d^(degree-1) with constant 1 for polynomial attention; inf for max "
    "with exact queries. They are scales, not the n at the threshold.")


def timing_table(df: pd.DataFrame, matmul_gflops: float | None) -> pd.DataFrame:
    """Per (kernel, attention similarity and separation, d): cells, compile and run seconds, achieved GFLOP/s and its share of the
    matmul rate measured in the same process."""
    ok = df[df["status"].isin(["ok", "nan"])]
    t = ok.groupby(["kernel", "similarity", "separation", "d"], dropna=False).agg(cells=("cell_id", "nunique"), compile_s=("compile_s", "sum"),
                                        run_s=("run_s", "sum"), flops=("flops", "sum")).reset_index()
    t["gflops"] = t["flops"] / t["run_s"].where(t["run_s"] > 0) / 1e9
    t["of_matmul"] = t["gflops"] / matmul_gflops if matmul_gflops else float("nan")
    return t


def build(run_dir: Path) -> tuple[Path, Path]:
    manifest = store.read_manifest(run_dir)
    df = store.load_results(run_dir)
    capacity = plots.capacity_table(df)
    timings = timing_table(df, manifest.get("matmul_gflops"))
    figures = sorted((run_dir / plots.FIGURES).glob("*.png"))
    status = df["status"].value_counts().to_dict()
    problems = df[df["status"] != "ok"][["kernel", "similarity", "separation", "topk", "d", "n", "noise", "seed",
                                         "status", "error"]]
    found = store.load_capacity(run_dir)
    searched = None
    if found is not None and len(found):
        searched = found.assign(setting=[plots.setting_name(r) for _, r in found.iterrows()],
                                probes=found["probes_n"].map(len),
                                acc_at_capacity=found["acc_at_capacity"].round(4),
                                theory_scale=found["theory_scale"].map(lambda x: f"{x:.3g}"))
        searched = searched[["setting", "d", "capacity_text", "acc_at_capacity", "probes", "theory_scale"]].rename(
            columns={"capacity_text": f"capacity (accuracy >= {found['threshold'].iloc[0]:g})"})

    about = [
        ("run", manifest.get("run_id")),
        ("spec", ", ".join(f"{k}={v}" for k, v in manifest.get("spec", {}).items())),
        ("started / ended", f"{manifest.get('started')} / {manifest.get('ended')}"),
        ("backend", f"{manifest.get('backend')} ({manifest.get('device_kind')} x {manifest.get('device_count')})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())),
        ("x64 / matmul precision", f"{manifest.get('x64')} / {manifest.get('matmul_precision')}"),
        ("git", f"{manifest.get('git_commit')} (dirty: {manifest.get('git_dirty')})"),
        ("host", manifest.get("host")),
        ("matmul rate", f"{manifest.get('matmul_gflops', float('nan')):.1f} GFLOP/s (float32, same process)"),
        ("rows", f"{len(df)} ({', '.join(f'{k}: {v}' for k, v in sorted(status.items()))})"),
        ("compile / run", f"{df['compile_s'].sum():.1f} s / {df['run_s'].sum():.1f} s"),
    ]
    cap = capacity[["setting", "d", "n_cos", "n_acc"]].rename(
        columns={"n_cos": f"largest n with cos >= {plots.COS_THRESHOLD}", "n_acc": f"largest n with acc >= {plots.ACC_THRESHOLD}"})
    tim = timings.assign(compile_s=timings["compile_s"].round(2), run_s=timings["run_s"].round(2),
                         gflops=timings["gflops"].round(1), of_matmul=timings["of_matmul"].round(3))
    tim = tim.drop(columns=["flops"])

    md = ["# Associative-memory benchmark report", "", "## What ran, and on what", ""]
    md += [f"- **{k}**: {v}" for k, v in about]
    md += ["", "Dashed lines: random baseline. Dotted: theory (see bench/theory.py; approximate at small d).", "",
           THEORY_NOTE, ""]
    if searched is not None:
        md += ["## Capacity search", "", SEARCH_NOTE, "", _markdown(searched), ""]
    md += ["## Capacity on the grid", "", _markdown(cap), "", "## Timings", "",
           "compile_s is ahead-of-time compilation, run_s the timed runs; GFLOP/s from analytic FLOP counts.", "",
           _markdown(tim), ""]
    from bench import hallucination

    curve = hallucination.load(run_dir)
    fuzzy_text = ("Records map 24 words to 8 categories; each held-out word (in no record) is queried once. "
                  "A hallucinated answer is a word that is no stored value.")
    if curve is not None:
        md += ["## Fuzzy key-value store: hallucination vs beta", "", fuzzy_text, "", _markdown(curve.round(3)), ""]
    if len(problems):
        md += ["## Cells that did not run cleanly", "", _markdown(problems.head(50)), ""]
    md += ["## Figures", ""] + [f"![{p.stem}]({plots.FIGURES}/{p.name})" for p in figures] + [""]
    md_path = run_dir / "report.md"
    store.atomic_write_bytes(md_path, "\n".join(md).encode())

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Associative-memory benchmark report</title>",
             "<style>body{font-family:sans-serif;max-width:1500px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}</style></head><body>",
             "<h1>Associative-memory benchmark report</h1><h2>What ran, and on what</h2><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in about]
    parts += ["</ul><p>Dashed lines: random baseline. Dotted: theory (approximate at small d).</p>",
              f"<p>{html.escape(THEORY_NOTE)}</p>"]
    if searched is not None:
        parts += ["<h2>Capacity search</h2>", f"<p>{html.escape(SEARCH_NOTE)}</p>", searched.to_html(index=False)]
    parts += ["<h2>Capacity on the grid</h2>", cap.to_html(index=False), "<h2>Timings</h2>",
              "<p>compile_s is ahead-of-time compilation, run_s the timed runs; GFLOP/s from analytic FLOP counts.</p>",
              tim.to_html(index=False)]
    if curve is not None:
        parts += ["<h2>Fuzzy key-value store: hallucination vs beta</h2>", f"<p>{html.escape(fuzzy_text)}</p>",
                  curve.round(3).to_html(index=False)]
    if len(problems):
        parts += ["<h2>Cells that did not run cleanly</h2>", problems.head(50).to_html(index=False)]
    parts.append("<h2>Figures</h2>")
    for p in figures:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(p.stem)}</h3><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    html_path = run_dir / "report.html"
    store.atomic_write_bytes(html_path, "\n".join(parts).encode())
    return html_path, md_path


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description="Rebuild a run's report.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        html_path, md_path = build(args.run_dir)
    except store.StoreError as e:
        print(f"bench.report: error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
