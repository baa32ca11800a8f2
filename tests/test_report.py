"""The report: one document rendered to markdown and HTML, readable in a browser (blank where a
setting does not apply, small rates with digits, the spec as a table)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench import report, rundir, store
from conftest import sweep_into
from bench.spec import SweepSpec


def test_cells_read_as_text_blank_where_a_setting_does_not_apply():
    df = pd.DataFrame({"similarity": [None, "dot"], "gflops": [0.0123456, 151.234], "beta": [math.nan, 1.0],
                       "n": [4, 64]})
    text = report.as_text(df)
    assert list(text["similarity"]) == ["", "dot"]
    assert list(text["gflops"]) == ["0.01235", "151.2"]  # a small cell does not read 0.0
    assert list(text["beta"]) == ["", "1"] and list(text["n"]) == ["4", "64"]


def test_one_document_renders_to_markdown_and_html_with_the_same_content(tmp_path):
    spec = SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 16), seeds=1)
    run_dir = store.new_run_dir(tmp_path)
    manifest = sweep_into(spec, run_dir)
    store.merge(run_dir, manifest, manifest["cell_order"])
    blocks = report.document(rundir.read(run_dir))
    md, page = report.to_markdown(blocks), report.to_html(blocks)
    headings = [b.content for b in blocks if b.kind == "heading"]
    assert "Timings per family" in headings and "Capacity on the grid" in headings
    assert headings[0] == "What ran, and on what"  # the environment comes first
    at = next(i for i, b in enumerate(blocks) if b.kind == "heading" and b.content == "Timings per family")
    timings = blocks[at + 2].content
    assert list(timings.columns) == ["setting", "d", "cells", "compile_s", "run_s", "gflops", "of_matmul"]
    assert list(timings["setting"]) == ["hebbian noise=0"] and list(timings["cells"]) == ["2"]
    assert float(timings["of_matmul"].iloc[0]) == pytest.approx(float(timings["gflops"].iloc[0]) / 100.0, rel=1e-3)
    for heading in headings:
        assert f"## {heading}" in md and f"<h2>{heading}</h2>" in page
    spec_table = next(b.content for b in blocks if b.kind == "table")
    assert dict(zip(spec_table["setting"], spec_table["value"]))["n"] == "4, 16"  # readable, not a repr
    assert "nan" not in md.lower()  # no NaN shown for settings hebbian does not have
    assert "<td>NaN</td>" not in page and "<td>nan</td>" not in page
