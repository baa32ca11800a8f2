"""The run report: report.md and a self-contained report.html (figures embedded), from the
run's parquet, manifest and figures alone.

    python -m bench.report RUN_DIR     # rebuild RUN_DIR/report.html and report.md
"""

from __future__ import annotations

import base64
import html
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from bench import rundir, store
from bench.summaries import ACC_THRESHOLD, COS_THRESHOLD, capacity_table, setting_name, timing_table


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


class Block(NamedTuple):
    """One block of the report's document model, rendered to markdown and to HTML alike.
    kind: "title", "heading", "paragraph", "facts" (label, text pairs), "table" (a DataFrame
    of already formatted strings) or "figure" (a PNG path)."""

    kind: str
    content: Any


def about_facts(manifest: dict[str, Any], df: pd.DataFrame) -> list[tuple[str, str]]:
    """The environment first: what ran, where, with which versions, and how long it took."""
    status = df["status"].value_counts().to_dict()
    return [
        ("run", manifest.get("run_id")),
        ("started / ended", f"{manifest.get('started')} / {manifest.get('ended')}"),
        ("backend", f"{manifest.get('backend')} ({manifest.get('device_kind')} x {manifest.get('device_count')})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())),
        ("x64 / matmul precision", f"{manifest.get('x64')} / {manifest.get('matmul_precision')}"),
        ("git", f"{manifest.get('git_commit')} (dirty: {manifest.get('git_dirty')})"),
        ("host", f"{manifest.get('host')} ({manifest.get('platform')}, Python {manifest.get('python')})"),
        ("matmul rate", f"{manifest.get('matmul_gflops', float('nan')):.1f} GFLOP/s (float32, same process)"),
        ("rows", f"{len(df)} ({', '.join(f'{k}: {v}' for k, v in sorted(status.items()))})"),
        ("compile / run", f"{df['compile_s'].sum():.1f} s / {df['run_s'].sum():.1f} s" + (
            f" ({manifest['compiled_programs']} programs compiled; cells waited {manifest['compile_wait_s']:.1f} s "
            "for them)" if isinstance(manifest.get("compile_wait_s"), (int, float)) else "")),
    ]


def document(run: rundir.Run) -> list[Block]:
    """The report of a run, once: every section as blocks, from its parquet, manifest and figures."""
    manifest, df = run.manifest, run.results
    capacity = capacity_table(df)
    timings = timing_table(df, manifest.get("matmul_gflops"))
    problems = df[df["status"] != "ok"][["kernel", "similarity", "separation", "topk", "d", "n", "noise", "seed",
                                         "status", "error"]]
    about = about_facts(manifest, df)
    spec = pd.DataFrame([(k, ", ".join(map(str, v)) if isinstance(v, list) else str(v))
                         for k, v in (manifest.get("spec") or {}).items()], columns=["setting", "value"])
    blocks = [Block("title", "Associative-memory benchmark report"), Block("heading", "What ran, and on what"),
              Block("facts", about), Block("table", spec),
              Block("paragraph", "Dashed lines: random baseline. Dotted: theory (see bench/theory.py; approximate "
                                 "at small d)."), Block("paragraph", THEORY_NOTE)]
    found = run.capacity
    if found is not None and len(found):
        searched = found.assign(setting=[setting_name(r) for _, r in found.iterrows()],
                                probes=found["probes_n"].map(len))
        searched = searched[["setting", "d", "capacity_text", "acc_at_capacity", "probes", "theory_scale"]].rename(
            columns={"capacity_text": f"capacity (accuracy >= {found['threshold'].iloc[0]:g})"})
        blocks += [Block("heading", "Capacity search"), Block("paragraph", SEARCH_NOTE), Block("table", as_text(searched))]
    cap = capacity[["setting", "d", "n_cos", "n_acc"]].rename(
        columns={"n_cos": f"largest n with cos >= {COS_THRESHOLD}", "n_acc": f"largest n with acc >= {ACC_THRESHOLD}"})
    blocks += [Block("heading", "Capacity on the grid"), Block("table", as_text(cap)), Block("heading", "Timings per family"),
               Block("paragraph", "One row per memory setting and d: compile_s is ahead-of-time compilation (of "
                                  "the programs its cells ran), run_s the timed runs; GFLOP/s from analytic FLOP "
                                  "counts, of_matmul its share of the matmul rate measured at the start of the run."),
               Block("table", as_text(timings.drop(columns=["flops"])))]
    curve = run.hallucination
    if curve is not None:
        blocks += [Block("heading", "Fuzzy key-value store: hallucination vs beta"),
                   Block("paragraph", "Records map 24 words to 8 categories; each held-out word (in no record) is "
                                      "queried once. A hallucinated answer is a word that is no stored value."),
                   Block("table", as_text(curve))]
    if len(problems):
        blocks += [Block("heading", "Cells that did not run cleanly"), Block("table", as_text(problems.head(50)))]
    blocks.append(Block("heading", "Figures"))
    blocks += [Block("figure", p) for p in run.figures()]
    return blocks


def as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as the text a reader sees: blank where a setting does not apply (not NaN),
    floats to 4 significant digits (so a small cell's GFLOP/s does not read 0.0)."""
    def show(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.4g}"
        return str(v)

    return df.astype(object).apply(lambda col: col.map(show))


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, content in blocks:
        if kind == "title":
            out += [f"# {content}", ""]
        elif kind == "heading":
            out += [f"## {content}", ""]
        elif kind == "paragraph":
            out += [content, ""]
        elif kind == "facts":
            out += [f"- **{k}**: {v}" for k, v in content] + [""]
        elif kind == "table":
            out += [markdown_table(content), ""]
        elif kind == "figure":
            out.append(f"![{content.stem}]({store.FIGURES}/{content.name})")
    return "\n".join(out + [""])


def to_html(blocks: list[Block]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Associative-memory benchmark report</title>",
           "<style>body{font-family:sans-serif;max-width:1500px;margin:auto;padding:1em}"
           "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
           "img{max-width:100%}</style></head><body>"]
    for kind, content in blocks:
        if kind == "title":
            out.append(f"<h1>{html.escape(content)}</h1>")
        elif kind == "heading":
            out.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "paragraph":
            out.append(f"<p>{html.escape(content)}</p>")
        elif kind == "facts":
            out.append("<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                                        for k, v in content) + "</ul>")
        elif kind == "table":
            out.append(content.to_html(index=False))
        elif kind == "figure":
            data = base64.b64encode(content.read_bytes()).decode()
            out.append(f"<h3>{html.escape(content.stem)}</h3>"
                       f"<img alt='{html.escape(content.stem)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)


def build(run: rundir.Run) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md and report.html from one document."""
    blocks = document(run)
    md_path, html_path = run.path / "report.md", run.path / "report.html"
    store.atomic_write_bytes(md_path, to_markdown(blocks).encode())
    store.atomic_write_bytes(html_path, to_html(blocks).encode())
    return html_path, md_path


def markdown_table(df: pd.DataFrame) -> str:
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
        run = rundir.read(args.run_dir)
        if (run.manifest.get("spec") or {}).get("nested"):
            from bench import nested_report

            html_path, md_path = nested_report.build(run)
        else:
            html_path, md_path = build(run)
    except store.StoreError as e:
        print(f"bench.report: error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
