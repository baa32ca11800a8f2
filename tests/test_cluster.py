"""Multi-process runs (bench.cluster): the split of families over processes, the flags, a
coordinator that never appears (fast set); and whole runs of 2 and 4 processes over loopback
against a single process, a killed process and its resume (slow set)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench import cluster, store, sweep
from bench.spec import SweepSpec
from tests.conftest import PYTHON, REPO, run_env

METRICS = ["cos_mean", "cos_std", "dist_mean", "acc", "baseline_cos", "baseline_dist", "status"]


def test_split_is_deterministic_complete_and_balanced():
    costs = [(f"f{i}", c) for i, c in enumerate([9.0, 1.0, 7.0, 3.0, 3.0, 5.0, 2.0, 8.0])]
    owner = cluster.split(costs, 3)
    assert owner == cluster.split(costs, 3) and set(owner) == {k for k, _ in costs}
    load = cluster.loads(costs, owner, 3)
    assert sum(load) == 38.0 and max(load) <= 38.0 / 3 * 4 / 3 + 1e-9  # LPT: within 4/3 of the ideal
    assert max(load) == 13.0  # the optimum here: 9+3+1, 8+5, 7+3+2
    assert set(cluster.split(costs, 1).values()) == {0}
    assert cluster.split([("a", 1.0), ("b", 1.0)], 2) == {"a": 0, "b": 1}  # ties: input order, lower index


def test_split_cells_keeps_families_whole_and_skips_finished_cells():
    spec = SweepSpec(kernels=("hebbian", "pinv"), d=(8, 16, 32), n=(4, 16, 64), seeds=2)
    cells = spec.cells(auto_method="gram64")
    owner, load = sweep.split_cells(spec, set(), 2, "gram64")
    by_family = {}
    for c in cells:
        by_family.setdefault((c.kernel, c.d), set()).add(owner(c))
    assert all(len(p) == 1 for p in by_family.values()) and {p for ps in by_family.values() for p in ps} == {0, 1}
    assert len(load) == 2 and min(load) > 0
    # the largest family (pinv, d = 32) costs most; finished cells cost nothing
    finished = {c.id for c in cells if (c.kernel, c.d) == ("pinv", 32)}
    _, less = sweep.split_cells(spec, finished, 2, "gram64")
    assert sum(less) < sum(load)


@pytest.mark.parametrize("argv, message", [
    (["--process-id", "1"], "--process-id applies to a multi-process run; add --distributed"),
    (["--distributed", "--num-processes", "2"], "--coordinator, --num-processes and --process-id go together"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2: use 0..1"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes 0: use a whole number >= 1"),
    (["--distributed", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "1"],
     "--coordinator 'nohost': give HOST:PORT"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1",
      "--connect-timeout", "0"], "--connect-timeout and --barrier-timeout: use seconds > 0"),
    (["--distributed", "--capacity"], "--capacity runs in one process"),
])
def test_bad_cluster_flags_are_one_line(argv, message, tmp_path, capsys):
    from bench import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--kernels", "hebbian", "--d", "8", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(out: Path, *extra: str) -> list[str]:
    return [PYTHON, "run_all.py", "--kernels", "hebbian,pinv,ridge", "--d", "8,16", "--n", "4,16,64", "--seeds", "3",
            "--no-report", "--no-compile-cache", "--progress", "off", "--out", str(out), *extra]


def _distributed(port: int, processes: int, process: int) -> list[str]:
    return ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
            "--process-id", str(process), "--connect-timeout", "60"]


def test_a_coordinator_that_never_appears_is_a_clear_error_in_time(tmp_path):
    start = time.monotonic()
    done = subprocess.run(_command(tmp_path / "out", "--distributed", "--coordinator", f"127.0.0.1:{_free_port()}",
                                   "--num-processes", "2", "--process-id", "1", "--connect-timeout", "2"),
                          capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("run_all.py")]
    assert len(lines) == 1 and "no coordinator at 127.0.0.1:" in lines[0] and "after 2 s; start process 0" in lines[0]
    assert time.monotonic() - start < 30
    assert not any((tmp_path / "out").glob("*/manifest.json"))


def _launch(out: Path, processes: int, devices: int, *extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    env = run_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return [subprocess.Popen(_command(out, *_distributed(port, processes, p), *extra), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for p in range(processes)]


def _wait(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]


def _single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    done = subprocess.run(_command(out), capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    return next(out.iterdir())


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return _single(tmp_path_factory)


def _same_rows(a: Path, b: Path) -> None:
    ra, rb = store.load_results(a), store.load_results(b)
    assert len(ra) == len(rb) == 3 * 2 * 3 * 3
    keys = ["cell_id", "seed"]
    ra, rb = ra.sort_values(keys).reset_index(drop=True), rb.sort_values(keys).reset_index(drop=True)
    assert (ra[keys] == rb[keys]).all().all()
    for column in METRICS:
        assert ra[column].equals(rb[column]), column  # bit for bit: a cell's numbers do not depend on who ran it


@pytest.mark.slow
@pytest.mark.xdist_group("cluster")
@pytest.mark.parametrize("processes, devices", [(2, 2), (4, 1)])
def test_a_run_split_over_processes_gives_the_single_process_rows(processes, devices, single, tmp_path):
    out = tmp_path / "out"
    _wait(_launch(out, processes, devices))
    (run_dir,) = list(out.iterdir())
    _same_rows(single, run_dir)
    manifest = store.read_manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["processes"] == processes
    assert manifest["process_count"] == processes and manifest["device_count"] == processes * devices
    # every family compiled once, by one process: hebbian and pinv (ridge runs in pinv's) x 2 d
    assert manifest["compiled_programs"] == 4
    assert len(manifest["estimated_s_per_process"][0]) == processes


@pytest.mark.slow
@pytest.mark.xdist_group("cluster")
@pytest.mark.parametrize("resume_processes", [1, 2])
def test_a_killed_process_loses_only_unfinished_cells(resume_processes, single, tmp_path):
    """Two processes; one is killed once a few parts exist (the runtime then takes the other
    down: here it is killed too). A resume by one or two processes keeps every finished part
    as it was and computes only the rest."""
    out = tmp_path / "out"
    procs = _launch(out, 2, 1)
    deadline = time.monotonic() + 300
    parts = []
    while time.monotonic() < deadline and len(parts) < 3:
        parts = list(out.glob("*/parts/*.parquet"))
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    (run_dir,) = list(out.iterdir())
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "parts").glob("*.parquet")}
    assert 3 <= len(kept) < 18, "the run was not interrupted mid-way"
    if resume_processes == 1:
        done = subprocess.run([PYTHON, "run_all.py", "--resume", str(run_dir), "--no-compile-cache", "--progress",
                               "off"], capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stderr
    else:
        port = _free_port()
        _wait([subprocess.Popen([PYTHON, "run_all.py", "--resume", str(run_dir), "--no-compile-cache", "--progress",
                                 "off", *_distributed(port, 2, p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=run_env(), cwd=REPO) for p in range(2)])
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "parts").glob("*.parquet")}
    assert len(after) == 18 and all(after[name] == kept[name] for name in kept)  # finished parts untouched
    _same_rows(single, run_dir)
    assert store.read_manifest(run_dir)["status"] == "complete"
    assert os.path.exists(run_dir / store.RESULTS)
