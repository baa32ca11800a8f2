"""bench.compare on small real runs: identical settings give zero metric changes, different d
lists compare only their overlap, a run compared to itself changes nothing, planted changes are
flagged, and bad inputs are one line with exit code 2."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from bench import compare, pipeline, rundir
from bench.spec import SweepSpec


def _run(out, d):
    spec = SweepSpec(kernels=("hebbian",), d=d, n=(4, 16, 64), seeds=2)
    run = pipeline.start(spec, out, ["test"])
    pipeline.execute(run, report=False)
    return run.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {"a": _run(out, (8, 16)), "b": _run(out, (8, 16)), "c": _run(out, (16, 32)), "d": _run(out, (32,))}


def test_identical_settings_change_no_metric(runs):
    c = compare.compare(rundir.read(runs["a"]), rundir.read(runs["b"]), speed_tol=1e9)
    assert len(c.cells) == 6 and c.only_a == c.only_b == 0 and (c.cells["seeds"] == 2).all()
    for m in compare.METRICS:
        assert (c.cells[f"{m}_change"] == 0).all()  # bit for bit: same code, same backend
    assert (c.cells["flag"] == "").all()
    assert (c.cells["speed_ratio"] > 0).all() and len(c.families) == 2
    assert compare.differences(c.environment) == []


def test_a_run_compared_with_itself(runs):
    run = rundir.read(runs["a"])
    c = compare.compare(run, run)
    assert (c.cells["speed_ratio"] == 1).all() and (c.cells["flag"] == "").all()
    assert (c.families["run_ratio"] == 1).all() and (c.families["compile_ratio"] == 1).all()


def test_different_d_lists_compare_only_their_overlap(runs):
    c = compare.compare(rundir.read(runs["a"]), rundir.read(runs["c"]), speed_tol=1e9)
    assert sorted(c.cells["d"].unique()) == [16] and len(c.cells) == 3
    assert c.only_a == 3 and c.only_b == 3
    assert (c.cells["cos_mean_change"] == 0).all()  # pairs do not depend on the grid around a cell


def test_planted_changes_are_flagged(runs):
    a, b = rundir.read(runs["a"]), rundir.read(runs["b"])
    da, db = a.results.copy(), b.results.copy()
    assert (db[["d", "n", "seed"]].to_numpy() == da[["d", "n", "seed"]].to_numpy()).all()  # same row order
    da["run_s"] = db["run_s"] = 0.001  # no speed noise but the planted one
    metric_cell = (db["d"] == 8) & (db["n"] == 16)
    tiny_slow = (db["d"] == 8) & (db["n"] == 64)      # 3x slower, but milliseconds: noise by default
    slow = (db["d"] == 16) & (db["n"] == 64)          # 3x slower at 0.1 s per seed: flagged
    da.loc[slow, "run_s"] = 0.1
    db.loc[slow, "run_s"] = 0.3
    db.loc[tiny_slow, "run_s"] = 0.003
    db.loc[metric_cell, "cos_mean"] += 0.01
    db.loc[(db["d"] == 16) & (db["n"] == 4) & (db["seed"] == 0), "status"] = "error"
    c = compare.compare(a._replace(results=da), b._replace(results=db))
    flags = {(r.d, r.n): r.flag for r in c.cells.itertuples()}
    assert flags == {(8, 4): "", (8, 16): "metrics", (8, 64): "", (16, 4): "status", (16, 16): "", (16, 64): "slower"}
    assert c.cells.loc[(c.cells["d"] == 8) & (c.cells["n"] == 16), "cos_mean_change"].iloc[0] == pytest.approx(0.01)
    assert c.cells.loc[(c.cells["d"] == 16) & (c.cells["n"] == 64), "speed_ratio"].iloc[0] == pytest.approx(3)
    summary = "\n".join(compare.summary_lines(c))
    assert "flagged: 3 (metrics 1, slower 1, faster 0, status 1)" in summary
    # without the floor, the millisecond cell is flagged too; swapped, both are faster
    assert compare.compare(a._replace(results=da), b._replace(results=db), min_time=0).cells["flag"].tolist().count(
        "slower") == 2
    swapped = compare.compare(b._replace(results=db), a._replace(results=da))
    assert swapped.cells["flag"].str.contains("faster").sum() == 1


def test_environment_differences_are_named(runs):
    a, b = rundir.read(runs["a"]), rundir.read(runs["b"])
    backend = a.manifest["backend"]  # cpu here, gpu on a GPU machine
    other = "tpu" if backend == "gpu" else "gpu"
    manifest = {**b.manifest, "backend": other, "x64": False, "versions": {**b.manifest["versions"], "jax": "9.9"}}
    c = compare.compare(a, b._replace(manifest=manifest), speed_tol=1e9)
    differ = compare.differences(c.environment)
    assert f"backend {backend} -> {other}" in differ and "x64 True -> False" in differ
    assert any(d.startswith("jax ") and d.endswith("-> 9.9") for d in differ)
    assert "environment differs: " in "\n".join(compare.summary_lines(c))


def test_the_command_writes_a_comparison_report(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare.main([str(runs["a"]), str(runs["c"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cells compared: 3 (only in A: 3, only in B: 3)" in printed and "per family (B / A):" in printed
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Per family: compile and run time" in html
    md = (out / "compare.md").read_text()
    assert "![speed_ratio](figures/speed_ratio.png)" in md and "| field | A | B | differs |" in md
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 3 and {"speed_ratio", "cos_mean_change", "flag"} <= set(cells.columns)
    assert np.isfinite(cells["gflops_a"]).all()


def test_runs_without_common_cells_are_refused(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare.main([str(runs["a"]), str(runs["d"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "share no cells (kernels hebbian, d 8,16, n 4,16,64 vs kernels hebbian, d 32, n 4,16,64)" in err
    assert err.count("\n") == 1 and not out.exists()


def test_bad_inputs_are_one_line_and_exit_2(runs, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nope"), str(runs["a"])], "no such run directory"),
        ([str(tmp_path), str(runs["a"])], "manifest"),  # a directory that is no run
        ([str(runs["a"]), str(runs["b"]), "--speed-tol", "-1"], "--speed-tol -1.0: use a finite number >= 0"),
        ([str(runs["a"]), str(runs["b"]), "--metric-tol", "nan"], "--metric-tol nan"),
    ]
    for argv, message in cases:
        assert compare.main(argv + ["--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    # a run whose cells have not run yet
    empty = pipeline.start(SweepSpec(kernels=("hebbian",), d=(8,), n=(4,), seeds=1), tmp_path / "runs", ["test"])
    empty.lock.release()
    assert compare.main([str(runs["a"]), str(empty.run_dir), "--out", str(tmp_path / "o")]) == 2
    assert "has no results yet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_unwritable_out_is_one_line(runs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert compare.main([str(runs["a"]), str(runs["b"]), "--out", str(blocker / "sub")]) == 2
    assert "cannot write the report to" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "file", ignore_errors=True)


def test_missing_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main(["only-one"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.compare: error: the following arguments are required") and err.count("\n") == 1
