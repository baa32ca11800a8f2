"""Hostile input and faults: extreme but valid settings are results, damaged run directories
are repaired or refused in one line, a full disk ends in one line with the resume command, two
resumes never share a run, and files keep the user's permissions."""

from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import cli, pipeline, store
from bench.spec import SweepSpec
from conftest import sweep_into

TINY = ["--kernels", "hebbian", "--d", "8", "--n", "4,8,16", "--seeds", "1", "--progress", "off", "--no-report",
        "--no-compile-cache"]


def test_extreme_settings_are_results_not_crashes(tmp_path):
    """The issue's crashing examples, in one sweep: every row recorded, none an error; where
    the answer is defined (exact queries, huge beta or degree) it is the hard maximum's."""
    spec = SweepSpec(kernels=("pinv", "hebbian", "ridge", "attention"), d=(32,), n=(4, 64), patterns=("binary",),
                     lam=(1e300,), separation=("softmax", "topk", "polynomial"), beta=(200.0, 1e12), topk=(2,),
                     degree=(1e3,), seeds=1)  # noise 1e200: tests/test_sweep.py
    sweep_into(spec, store.new_run_dir(tmp_path))
    df = store.load_results(next(tmp_path.iterdir()))
    assert len(df) == spec.row_count() == 16
    assert set(df["status"]) <= {"ok", "nan"}, df.loc[df["status"] == "error", "error"].tolist()
    exact = df[(df["kernel"] == "attention") & (df["n"] == 4)]
    assert len(exact) == 5 and (exact["status"] == "ok").all()
    assert np.allclose(exact["cos_mean"], 1.0)  # the hard max of 4 distinct keys: each its own value
    # Ridge at lambda = 1e300 is the Hebbian memory scaled by ~1e-300: the same cosines, not an
    # underflow, and not the pseudoinverse's (a failed solve once fell back to it, ignoring lambda).
    clean = df[df["kernel"] != "attention"].set_index(["kernel", "n"])["cos_mean"]
    for n in (4, 64):
        assert clean["ridge", n] == pytest.approx(clean["hebbian", n], rel=1e-6)
    assert clean["ridge", 64] < clean["pinv", 64] - 0.05
    assert df.loc[df["kernel"] == "ridge", "theory_cos"].isna().all()  # its closed form overflows: null


@pytest.mark.slow
@given(memory=st.sampled_from(["pinv", "ridge", "delta", "softmax", "topk", "polynomial", "identity", "max"]),
       beta=st.sampled_from([1e-30, 1e-3, 50.0, 1e12, 1e30]), degree=st.sampled_from([1e-3, 0.5, 40.0, 1e4]),
       noise=st.sampled_from([0.0, 1e-30, 1e3, 1e30, 1e200]), lam=st.sampled_from([1e-300, 1e-12, 1e12, 1e300]),
       eta=st.sampled_from([1e-12, 1.999999]), mask=st.sampled_from([0.0, 0.999]),
       patterns=st.sampled_from(["gaussian", "binary", "sphere"]))
def test_any_extreme_valid_setting_finishes_with_every_row_recorded(tmp_path_factory, memory, beta, degree, noise,
                                                                   lam, eta, mask, patterns):
    attention = memory not in ("pinv", "ridge", "delta")
    spec = SweepSpec(kernels=("attention",) if attention else (memory,), d=(16,), n=(2, 16, 64), noise=(noise,),
                     mask=(mask,), patterns=(patterns,), separation=(memory,) if attention else ("softmax",),
                     beta=(beta,), degree=(degree,), topk=(2,), lam=(lam,), eta=(eta,), seeds=2)
    run_dir = store.new_run_dir(tmp_path_factory.mktemp("extreme"))
    sweep_into(spec, run_dir)
    df = store.load_results(run_dir)
    assert len(df) == spec.row_count() == 6
    assert set(df["status"]) <= {"ok", "nan"}, df["error"].dropna().tolist()
    if noise == 0 and mask == 0 and attention and memory != "identity":
        assert (df.loc[df["n"] == 2, "status"] == "ok").all()  # exact queries of two keys: always a result


def _finished_run(tmp_path):
    spec = SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 8, 16), seeds=1)
    run = pipeline.start(spec, tmp_path / "out", ["test"])
    pipeline.execute(run, report=False)
    return run


def test_damaged_parts_are_set_aside_and_recomputed(tmp_path, capsys):
    run = _finished_run(tmp_path)
    clean = store.load_results(run.run_dir).drop(columns=list(store.TIMING_COLUMNS))
    parts = sorted((run.run_dir / store.PARTS).glob("*.parquet"))
    parts[0].write_bytes(b"PAR1 not really")                      # corrupted
    parts[1].write_bytes(b"")                                     # empty
    pq.write_table(pa.table({"x": [1]}), parts[2])                # another schema
    (run.run_dir / store.RESULTS).unlink()
    again = pipeline.resume(run.run_dir, {})
    err = capsys.readouterr().err
    assert err.count("moved to") == 3 and "computed again" in err
    pipeline.execute(again, report=False)
    assert sorted(p.name for p in (run.run_dir / store.DAMAGED).iterdir()) == sorted(p.name for p in parts)
    healed = store.load_results(run.run_dir).drop(columns=list(store.TIMING_COLUMNS))
    pd.testing.assert_frame_equal(healed, clean)


@pytest.mark.parametrize("field, value, message", [
    ("resumed", 5, "field 'resumed' is 5, expected list"),
    ("spec", "pinv", "field 'spec' is \"pinv\", expected dict"),
    ("cell_ids", True, "field 'cell_ids' is true, expected int"),
    ("compile_wait_s", "slow", "expected int or float"),
])
def test_a_manifest_with_a_wrong_field_is_named_in_one_line(tmp_path, capsys, field, value, message):
    run = _finished_run(tmp_path)
    manifest = store.read_manifest(run.run_dir)
    store.write_manifest(run.run_dir, {**manifest, field: value})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--resume", str(run.run_dir)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_broken_run_directories_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    run = _finished_run(tmp_path)
    (run.run_dir / store.MANIFEST).write_text("[1, 2]")
    with pytest.raises(SystemExit):
        cli.main(["--resume", str(run.run_dir)])
    assert "holds a list, not an object" in capsys.readouterr().err
    other = _finished_run(tmp_path / "b")
    parts = other.run_dir / store.PARTS
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    parts.write_text("a file where parts/ should be")
    with pytest.raises(SystemExit):
        cli.main(["--resume", str(other.run_dir)])
    assert "is not a directory; the run directory is damaged" in capsys.readouterr().err
    third = _finished_run(tmp_path / "c")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(third.run_dir) else real_access(p, mode))
    with pytest.raises(SystemExit):
        cli.main(["--resume", str(third.run_dir)])
    err = capsys.readouterr().err.strip()
    assert "is not writable" in err and len(err.splitlines()) == 1


def test_a_run_directory_in_use_is_refused(tmp_path):
    run = _finished_run(tmp_path)
    held = store.RunLock(run.run_dir)
    try:
        with pytest.raises(store.StoreError, match=f"in use by pid {os.getpid()}"):
            pipeline.resume(run.run_dir, {})
    finally:
        held.release()
    pipeline.resume(run.run_dir, {}).lock.release()  # free again once released


def test_a_run_directory_never_exists_without_its_manifest(tmp_path, monkeypatch):
    real_rename = os.rename

    def killed(src, dst):
        raise KeyboardInterrupt  # a kill between building the directory and publishing it

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        store.new_run_dir(tmp_path, {"spec": {}})
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind
    monkeypatch.setattr(os, "rename", real_rename)
    run_dir = store.new_run_dir(tmp_path, {"spec": {}})
    assert store.read_manifest(run_dir) == {"spec": {}, "run_id": run_dir.name}


def test_a_full_disk_ends_in_one_line_and_a_clean_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_write = store.atomic_write_bytes
    writes = {"parts": 0}

    def fills_up(path, data):
        if path.parent.name == store.PARTS:
            writes["parts"] += 1
            if writes["parts"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", fills_up)
    assert cli.main([*TINY, "--out", str(out)]) == cli.FAULT
    err = capsys.readouterr().err.strip()
    run_dir = next(out.iterdir())
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert f"the 1 finished cells in {run_dir} are safe" in err and f"--resume {run_dir}" in err
    assert [p.name for p in (run_dir / store.PARTS).iterdir()] == [p.name for p in (run_dir / store.PARTS).glob("*.parquet")]
    monkeypatch.setattr(store, "atomic_write_bytes", real_write)
    assert cli.main(["--resume", str(run_dir), "--progress", "off", "--no-report"]) == 0
    df = store.load_results(run_dir)
    assert len(df) == 3 and (df["status"] == "ok").all()
    assert store.read_manifest(run_dir)["status"] == "complete"


def test_files_get_the_users_permissions(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_UMASK", 0o027)
    run = _finished_run(tmp_path)
    for path in [run.run_dir / store.MANIFEST, run.run_dir / store.RESULTS, *(run.run_dir / store.PARTS).iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert stat.S_IMODE(run.run_dir.stat().st_mode) == 0o750
    assert json.loads((run.run_dir / store.MANIFEST).read_text())["status"] == "complete"
