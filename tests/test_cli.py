"""The command line end to end: bad input, a tiny run, devices, kill-and-resume, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench import cli, store, summaries
from bench.spec import SpecError, SweepSpec
from tests.conftest import PYTHON, REPO, run_env

TINY = ["--kernels", "pinv,hebbian", "--d", "8,16", "--n", "4,8,32", "--seeds", "2", "--progress", "off"]


def _run(argv, out: Path, **env):
    return subprocess.run([PYTHON, str(REPO / "run_all.py"), *argv, "--out", str(out)], capture_output=True, text=True,
                          env=run_env(**env), cwd=REPO, timeout=600)


def _rows(run_dir: Path) -> pd.DataFrame:
    df = pq.read_table(run_dir / store.RESULTS).to_pandas()
    return df.drop(columns=list(store.TIMING_COLUMNS)).sort_values(["cell_id", "seed"]).reset_index(drop=True)


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a["cell_id"]) == list(b["cell_id"])
    for col in a.columns:
        if a[col].dtype.kind == "f":
            # 1e-6 relative; the absolute floor covers means that are ~0 by cancellation (the
            # random-baseline cosine), whose terms are O(1).
            pd.testing.assert_series_equal(a[col], b[col], check_exact=False, rtol=1e-6, atol=1e-9)
        else:
            assert list(a[col]) == list(b[col]), col


BAD = [
    (["--d", "0"], "d: 0 is not a positive integer"),
    (["--d", "abc"], "'abc' is not an integer"),
    (["--n", "8,-3"], "n: -3 is not a positive integer"),
    (["--kernels", "pinv,bogus"], "unknown kernel 'bogus'"),
    (["--noise", "-0.1"], "noise: -0.1"),
    (["--seeds", "0"], "seeds: 0 is not a positive integer"),
    (["--n", "2^31"], "n: 2147483648 is too many pairs"),
    (["--capacity", "--max-n", "2^40"], "max_n: 1099511627776 is too many pairs"),
    (["--lam", "0"], "lam: 0.0"),
    (["--eta", "2.5"], "eta: 2.5"),
    (["--dtype", "float16"], "invalid choice"),
    (["--preset", "huge"], "invalid choice"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--kernels", "attention", "--similarity", "l3"], "similarity: unknown similarity 'l3'"),
    (["--kernels", "attention", "--separation", "sparsemax"], "separation: unknown separation 'sparsemax'"),
    (["--kernels", "attention", "--beta", "0"], "beta: 0.0 is not allowed"),
    (["--kernels", "attention", "--beta", "-2"], "beta: -2.0 is not allowed"),
    (["--kernels", "attention", "--topk", "0"], "topk: 0 is not a positive integer"),
    (["--kernels", "attention", "--heads", "3"], "heads: 3 does not divide d = 64"),
    (["--kernels", "attention", "--mask", "1"], "mask: 1.0 is not allowed"),
    (["--kernels", "attention", "--mask", "-0.1"], "mask: -0.1 is not allowed"),
    (["--kernels", "attention", "--steps", "0"], "steps: 0 is not a positive integer"),
    (["--kernels", "attention", "--steps", "2", "--dv", "8"], "needs dv == d"),
    (["--kernels", "pinv", "--beta", "2"], "--beta applies to attention memories; add attention to --kernels"),
    (["--capacity", "--n", "4"], "--n has no effect with --capacity"),
    (["--max-n", "100"], "add --capacity"),
    (["--capacity", "--threshold", "1.5"], "threshold: 1.5"),
    (["--capacity", "--max-n", "0"], "max_n: 0 is not a positive integer"),
    (["--capacity", "--patterns", "glove", "--d", "32", "--max-n", "2^17"], "max_n: 131072 pairs need"),
    # sizes nothing can run: refused up front, parsed without hanging, nothing written
    (["--d", "2^0..2^100000000"], "exponents go up to 62"),
    (["--n", "2^99"], "exponents go up to 62"),
    (["--d", "99999999999"], "d: 99999999999 is more than any device can index"),
    (["--kernels", "pinv", "--dv", "4294967296"], "dv: 4294967296 is more than any device can index"),
    (["--seeds", "100000000"], "rows, more than 4194304 a run can hold"),
    (["--out", ""], "--out: empty path"),
    (["--kernels", "attention", "--queries", "300000000", "--d", "64", "--n", "4"], "no cell fits in memory"),
    (["--kernels", "pinv", "--d", "2^20", "--n", "4"], "no cell fits in memory"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_written(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(out)] if "--out" not in argv else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(blocker / "sub"), *TINY])
    assert exit_info.value.code == 2
    assert "is not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"


def test_resume_of_a_path_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--resume", str(path)])
        assert exit_info.value.code == 2
        assert "run directory" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="^d: 1.5"):
        SweepSpec(d=(1.5,))
    with pytest.raises(SpecError, match="repeats"):
        SweepSpec(n=(4, 4))
    with pytest.raises(SpecError, match="preset"):
        SweepSpec.from_preset("nope")
    spec = SweepSpec.from_preset("quick", d=(8,))
    assert spec.d == (8,) and spec.kernels == SweepSpec.from_preset("quick").kernels
    assert SweepSpec.from_dict(spec.to_dict()) == spec


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    done = _run(TINY, out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("run written to ")
    return Path(done.stdout.strip().splitlines()[-1].removeprefix("run written to "))


@pytest.mark.slow  # a whole run_all.py process with its report (the fast set: test_pipeline, test_report)
@pytest.mark.xdist_group("tiny_run")  # one worker builds the run for all
def test_tiny_run_writes_everything(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"results.parquet", "manifest.json", "figures", "report.html", "report.md", "parts"} <= names
    df = pd.read_parquet(tiny_run / "results.parquet")
    assert len(df) == 2 * 2 * 3 * 2  # kernels x d x n x seeds
    assert set(store.SCHEMA.names) == set(df.columns)
    assert (df["status"] == "ok").all()
    pinv_small = df[(df.kernel == "pinv") & (df.n <= df.d)]
    assert (pinv_small["cos_mean"] > 0.9999).all() and (pinv_small["acc"] == 1).all()
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    for key in ("spec", "versions", "backend", "device_kind", "device_count", "matmul_precision", "x64", "git_commit",
                "git_dirty", "host", "started", "ended", "matmul_gflops"):
        assert key in manifest, key
    assert manifest["status"] == "complete" and manifest["compiled_programs"] == 4
    meta = pq.read_schema(tiny_run / "results.parquet").metadata
    assert json.loads(meta[b"manifest"])["run_id"] == tiny_run.name
    # One compile per family: the first cell of each (kernel, d) pays, the others reuse it.
    first = df.groupby(["kernel", "d"])["compile_s"].apply(lambda s: (s > 0).sum())
    assert (first == 2).all()  # the two seed rows of the family's first cell


@pytest.mark.slow  # a whole run_all.py process with its report (the fast set: test_pipeline, test_report)
@pytest.mark.xdist_group("tiny_run")  # one worker builds the run for all
def test_report_is_self_contained(tiny_run):
    html = (tiny_run / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    md = (tiny_run / "report.md").read_text()
    assert "## Capacity" in md and "## Timings" in md and "figures/" in md
    assert len(list((tiny_run / "figures").glob("*.svg"))) == 3  # pinv, hebbian, the fuzzy store's curve
    assert "hallucination vs beta" in md and (tiny_run / "figures" / "fuzzy_kv_hallucination.png").is_file()
    curve = pd.read_parquet(tiny_run / "hallucination.parquet")
    assert len(curve) >= 5 and ((curve["right"] + curve["wrong_stored"] + curve["hallucinated"]) - 1).abs().max() < 1e-9


@pytest.mark.slow  # a whole run_all.py process with its report (the fast set: test_pipeline, test_report)
@pytest.mark.xdist_group("tiny_run")  # one worker builds the run for all
def test_figures_and_report_rebuild_to_the_same_bytes(tiny_run, tmp_path):
    before = {p.name: p.read_bytes() for p in (tiny_run / "figures").iterdir()}
    for module in ("bench.plots", "bench.report"):
        done = subprocess.run([PYTHON, "-m", module, str(tiny_run)], capture_output=True, text=True, env=run_env(),
                              cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr
    after = {p.name: p.read_bytes() for p in (tiny_run / "figures").iterdir()}
    assert before == after
    done = subprocess.run([PYTHON, "-m", "bench.plots", str(tmp_path)], capture_output=True, text=True, env=run_env(),
                          cwd=REPO, timeout=300)
    assert done.returncode == 2 and "is not a run directory" in done.stderr


@pytest.mark.slow  # a whole run_all.py process with its report (the fast set: test_pipeline, test_report)
@pytest.mark.xdist_group("tiny_run")  # one worker builds the run for all
def test_capacity_table(tiny_run):
    cap = summaries.capacity_table(pd.read_parquet(tiny_run / "results.parquet"))
    pinv = cap[cap.kernel == "pinv"].set_index("d")
    assert pinv.loc[8, "n_acc"] == "8" and pinv.loc[16, "n_cos"] == "8"


@pytest.mark.slow  # a whole run_all.py process with its report (the fast set: test_pipeline, test_report)
@pytest.mark.xdist_group("tiny_run")  # one worker builds the run for all
def test_resume_with_a_contradicting_flag_is_refused(tiny_run, capsys):
    before = sorted(p.name for p in tiny_run.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--resume", str(tiny_run), "--d", "8"])
    assert exit_info.value.code == 2
    assert "contradicts the run's d=8,16" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_run.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")
def test_one_device_and_four_devices_give_the_same_rows(tmp_path, tiny_run):
    argv = ["--kernels", "pinv,hebbian,attention", "--similarity", "dot", "--separation", "softmax,topk", "--topk", "4",
            "--d", "8,16", "--n", "4,8,32", "--seeds", "3", "--mask", "0.25", "--no-report",
            "--progress", "off"]
    one = _run(argv, tmp_path / "one")
    four = _run(argv, tmp_path / "four", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert one.returncode == 0 and four.returncode == 0, (one.stderr, four.stderr)
    dir_one = Path(one.stdout.split("run written to ")[-1].strip())
    dir_four = Path(four.stdout.split("run written to ")[-1].strip())
    assert json.loads((dir_four / "manifest.json").read_text())["device_count"] == 4
    assert json.loads((dir_one / "manifest.json").read_text())["device_count"] == 1
    rows_one, rows_four = _rows(dir_one), _rows(dir_four)
    assert len(rows_one) == 2 * (2 * 2 * 3 * 3)  # (matrix kernels and separations) x d x n x seeds
    assert (rows_one.loc[rows_one["kernel"] == "attention", "status"] != "error").all()
    _assert_same_rows(rows_one, rows_four)


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    argv = ["--kernels", "pinv", "--d", "8,16,24", "--n", "4,8,16,32,64,128", "--seeds", "2", "--no-report",
            "--progress", "off"]
    whole = _run(argv, tmp_path / "whole")
    argv += ["--no-compile-cache"]  # each family compiles (seconds): the kill lands mid-run
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([PYTHON, str(REPO / "run_all.py"), *argv, "--out", str(out)], env=run_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        parts = list(out.glob("*/parts/*.parquet"))
        if len(parts) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = next(out.iterdir())
    finished = len(list((run_dir / "parts").glob("*.parquet")))
    assert 3 <= finished < 18, finished
    assert not (run_dir / "results.parquet").exists()
    resumed = subprocess.run([PYTHON, str(REPO / "run_all.py"), "--resume", str(run_dir), "--progress", "off"],
                             capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 1
    assert manifest["compiled_programs"] <= 3  # the resumed process compiled only what it still needed
    whole_dir = Path(whole.stdout.split("run written to ")[-1].strip())
    _assert_same_rows(_rows(whole_dir), _rows(run_dir))


def test_two_runs_at_once_never_touch_each_others_files(tmp_path):
    argv = ["--kernels", "hebbian", "--d", "8", "--n", "4,8,16", "--seeds", "2", "--no-report", "--progress", "off"]
    procs = [subprocess.Popen([PYTHON, str(REPO / "run_all.py"), *argv, "--out", str(tmp_path)], env=run_env(),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = {Path(o[0].split("run written to ")[-1].strip()) for o in outs}
    assert len(dirs) == 2 and set(tmp_path.iterdir()) == dirs
    frames = [_rows(d) for d in dirs]
    assert all(len(f) == 6 for f in frames)
    _assert_same_rows(*frames)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_cells_and_says_how_to_resume(tmp_path):
    argv = ["--kernels", "pinv", "--d", "8,16,24,32,40", "--n", "4,8,16,32,64,128", "--seeds", "2", "--no-report",
            "--progress", "off", "--no-compile-cache"]
    # A shell that starts CI in the background ignores SIGINT, and children inherit that (Python
    # then installs no KeyboardInterrupt handler): the child installs it itself, as a terminal would.
    launcher = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([PYTHON, "-c", launcher, str(REPO / "run_all.py"), *argv, "--out", str(tmp_path)],
                            env=run_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(tmp_path.glob("*/parts/*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert len(list(tmp_path.glob("*/parts/*.parquet"))) >= 2


@pytest.mark.slow
def test_attention_run_end_to_end(tmp_path):
    """Matrix and attention memories in one run: rows, the per-setting and side-by-side figures,
    the report's theory note; the top-k cells below k are skipped, not failed."""
    out = tmp_path / "out"
    code = cli.main(["--kernels", "hebbian,attention", "--similarity", "scaled_dot,euclidean", "--separation",
                     "softmax,topk", "--topk", "8", "--d", "8,16", "--n", "4,64,512", "--seeds", "2",
                     "--mask", "0,0.25", "--progress", "off", "--no-hallucination", "--out", str(out)])
    assert code == 0
    run_dir = next(out.iterdir())
    df = pd.read_parquet(run_dir / store.RESULTS)
    attention = df[df["kernel"] == "attention"]
    assert len(attention) == 2 * 2 * 2 * 3 * 2 * 2  # similarity x separation x mask x n x d x seeds
    assert set(attention.loc[attention["status"] == "skipped", "n"]) == {4}
    assert (df.loc[df["status"] != "skipped", "status"] == "ok").all()
    masked = attention[(attention["mask"] == 0.25) & (attention["n"] == 512)].groupby("d")["cos_mean"].mean()
    clean = attention[(attention["mask"] == 0) & (attention["n"] == 512)].groupby("d")["cos_mean"].mean()
    assert (masked < clean).all()  # zeroing a quarter of the query costs recall
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert "matrix_vs_attention_d=8.png" in figures
    assert "attention_scaled_dot_topk_beta=1_topk=8_noise=0_mask=0.25.png" in figures
    md = (run_dir / "report.md").read_text()
    assert "Softmax attention uses a mean-field weight" in md and "attention" in md
