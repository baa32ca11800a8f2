"""The regression gate (bench.regress, over bench.benchmarks): its arithmetic on synthetic figures (fast set), and the gate itself
against the committed baseline plus a planted slowdown (`pytest -m regress -n 0`, which CI runs
after the test suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import benchmarks, regress
from tests.conftest import run_env

RATIO = {"kind": "ratio", "value": 2.0, "tolerance": 0.25}


def _verdict(entry, value, **kw):
    (v,) = regress.judge({"b.f": entry}, {"b.f": value}, **kw)
    return v


def test_ratio_within_tolerance_passes_and_beyond_fails():
    assert _verdict(RATIO, 2.4).ok  # +20%
    slow = _verdict(RATIO, 2.6)     # +30%
    assert not slow.ok and slow.change == pytest.approx(0.3) and slow.limit == "<= +25%"
    fast = _verdict(RATIO, 1.0)     # twice as fast: passes, says to refresh the baseline
    assert fast.ok and "refresh" in fast.note


def test_ratios_of_another_machine_are_shown_not_gated():
    v = _verdict(RATIO, 8.0, gate_ratios=False)
    assert v.ok and v.limit == "not gated" and v.change == pytest.approx(3.0)
    # counts stay exact on any machine
    assert not _verdict({"kind": "count", "value": 12, "tolerance": 0}, 13, gate_ratios=False).ok


def test_counts_are_exact_bounds_are_limits_accuracies_are_two_sided():
    count = {"kind": "count", "value": 12.0, "tolerance": 0.0}
    assert _verdict(count, 12.0).ok and not _verdict(count, 13.0).ok and not _verdict(count, 11.0).ok
    bound = {"kind": "bound", "value": 0.5, "tolerance": 0.15, "limit": 0.6}
    assert _verdict(bound, 0.6).ok and not _verdict(bound, 0.61).ok and _verdict(bound, 0.1).ok
    acc = {"kind": "accuracy", "value": 0.5, "tolerance": 1e-4}
    assert _verdict(acc, 0.50009).ok and not _verdict(acc, 0.5002).ok and not _verdict(acc, 0.4998).ok


def test_missing_and_unmeasured_figures():
    new = regress.judge({}, {"b.f": 1.0})[0]
    assert new.ok and new.kind == "new"
    assert not _verdict(RATIO, float("nan")).ok
    assert not _verdict({"kind": "accuracy", "value": 1.0, "tolerance": 1}, float("inf")).ok
    # a baseline figure not measured now (a benchmark left out with --only) is not judged
    assert regress.judge({"b.f": RATIO, "c.g": RATIO}, {"b.f": 2.0})[0].name == "b.f"
    with pytest.raises(ValueError, match="unknown kind"):
        regress.judge({"b.f": {"kind": "speed", "value": 1, "tolerance": 1}}, {"b.f": 1.0})


def test_table_lists_regressions_first_with_their_change():
    verdicts = regress.judge({"a.x": RATIO, "z.y": RATIO}, {"a.x": 2.0, "z.y": 4.0})
    lines = regress.table(verdicts).splitlines()
    assert lines[2].startswith("| z.y | ratio | 2 | 4 | +100.0% | <= +25% | REGRESSED")
    assert lines[3].startswith("| a.x | ratio | 2 | 2 | +0.0% |") and lines[3].endswith("ok |")
    assert len(regress.table(verdicts, only_failures=True).splitlines()) == 3


def test_baseline_tolerance_comes_from_the_measured_spread(monkeypatch):
    monkeypatch.setitem(benchmarks.BENCHMARKS, "b", benchmarks.Benchmark(
        "b", "", None, {"t": ("ratio", 0.25), "peak": ("bound", 0.15), "c": ("count", 0.0)}))
    runs = [{"b.t": v, "b.peak": p, "b.c": 3.0} for v, p in ((1.0, 0.5), (1.1, 0.52), (0.9, 0.5))]
    base = regress.new_baseline(runs, {"backend": "cpu"})
    t = base["figures"]["b.t"]
    assert t["value"] == 1.0 and t["spread"] == pytest.approx(0.1) and t["tolerance"] == 0.25  # 2 x 10% < 25%
    wide = regress.new_baseline([{"b.t": v, "b.peak": 0.5, "b.c": 3.0} for v in (1.0, 1.29, 0.5)], {})
    # 2 x the 29% rise, rounded up to 5%; a fast outlier (0.5) is no noise that could fail the gate
    assert wide["figures"]["b.t"]["tolerance"] == pytest.approx(0.6) and wide["figures"]["b.t"]["range"] == [0.5, 1.29]
    assert base["figures"]["b.peak"]["limit"] == pytest.approx(0.52 * 1.15, abs=1e-3)
    assert base["figures"]["b.c"] == {"kind": "count", "value": 3.0, "runs": [3.0] * 3, "tolerance": 0.0}


def test_a_baseline_belongs_to_its_machine():
    here = {"backend": "cpu", "device_kind": "cpu", "device_count": 1, "cpu": "X", "cpus": 2}
    other = {**here, "cpu": "Y"}
    file = {"machines": {regress.machine(other): {"measured": "2026-01-01", "environment": other, "figures": {}},
                         regress.machine(here): {"measured": "2025-01-01", "environment": here, "figures": {}}}}
    assert regress.pick(file, here) == (file["machines"][regress.machine(here)], True)
    third = {**here, "cpu": "Z"}
    assert regress.pick(file, third) == (file["machines"][regress.machine(other)], False)  # the newest
    assert regress.environment_differences(here, other) == ["cpu: X -> Y"]


def test_committed_baseline_is_well_formed():
    path = regress.baseline_path("cpu")
    baselines = regress._read_baseline(path)
    for entry in baselines["machines"].values():
        assert entry["runs"] >= 10  # the spread behind each tolerance was measured over 10 runs
        for name, fig in entry["figures"].items():
            kind, _ = benchmarks.kind_of(name)  # every figure is one the benchmarks report
            assert fig["kind"] == kind and len(fig["runs"]) == entry["runs"]
            if kind == "ratio":
                assert fig["tolerance"] >= benchmarks.MIN_TOLERANCE and fig["tolerance"] >= 2 * fig["spread"] - 1e-9


def test_pytest_benchmark_reads_our_json(tmp_path):
    results = {"attention_recall": benchmarks.Measured({"time_ratio": 0.9}, [0.05, 0.06, 0.055]),
               "sweep_programs": benchmarks.Measured({"backend_compiles": 12.0}, [])}
    data = regress.pytest_benchmark_json(results)
    assert [b["name"] for b in data["benchmarks"]] == ["attention_recall"]
    assert data["benchmarks"][0]["stats"]["median"] == pytest.approx(0.055)
    path = tmp_path / "0001_run.json"
    path.write_text(json.dumps(data))
    tool = os.path.join(os.path.dirname(sys.executable), "py.test-benchmark")
    done = subprocess.run([tool, "compare", str(path)], capture_output=True, text=True, cwd=tmp_path, env=run_env())
    assert done.returncode == 0, done.stderr
    assert "attention_recall" in done.stdout and "Median" in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["--only", "nope"], "--only nope: unknown benchmark nope; use some of grid_compile"),
    (["--only", ","], "unknown benchmark (none given)"),
    (["--rounds", "0"], "--rounds 0: use a whole number >= 1"),
    (["--confirm", "-1"], "--confirm -1: use a whole number >= 0"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert regress.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_missing_or_damaged_baseline_is_a_usage_error(capsys, tmp_path):
    assert regress.main(["--baseline", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 2
    assert "no baseline at" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"machines": {}}')
    assert regress.main(["--baseline", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "has no machines with figures" in capsys.readouterr().err
    bad.write_text("{not json")
    assert regress.main(["--baseline", str(bad)]) == 2
    assert "cannot be read" in capsys.readouterr().err


def _synthetic(monkeypatch, ratios):
    """A benchmark 'toy' whose successive measurements report the given time ratios."""
    values = iter(ratios)
    calls = []

    def toy(rounds):
        calls.append(rounds)
        return benchmarks.Measured({"time_ratio": next(values), "hits": 3.0}, [0.1] * rounds)

    monkeypatch.setitem(benchmarks.BENCHMARKS, "toy", benchmarks.Benchmark(
        "toy", "a toy", toy, {"time_ratio": ("ratio", 0.25), "hits": ("count", 0.0)}))
    return calls


def _toy_baseline(value=1.0):
    env = regress.environment()
    return {"machines": {regress.machine(env): {
        "measured": "now", "runs": 10, "environment": env,
        "figures": {"toy.time_ratio": {"kind": "ratio", "value": value, "tolerance": 0.25},
                    "toy.hits": {"kind": "count", "value": 3.0, "tolerance": 0.0}}}}}


def test_gate_confirms_a_regression_before_failing(monkeypatch, tmp_path):
    # A transient: slow once, then normal again. The re-measurement clears it.
    calls = _synthetic(monkeypatch, [1.6, 1.05])
    ok, verdicts, _ = regress.run_gate(["toy"], 3, tmp_path, 2, _toy_baseline(), lambda s: None)
    assert ok and len(calls) == 2
    # A real slowdown: slow every time. It fails after --confirm re-measurements, table written.
    calls = _synthetic(monkeypatch, [2.0, 1.9, 2.1])
    ok, verdicts, results = regress.run_gate(["toy"], 3, tmp_path, 2, _toy_baseline(), lambda s: None)
    assert not ok and len(calls) == 3
    assert results["toy"].figures["time_ratio"] == 1.9  # judged on its best measurement
    gate = (tmp_path / "gate.md").read_text()
    assert "# Regression gate: FAIL" in gate and "| toy.time_ratio | ratio | 1 | 1.9 | +90.0% | <= +25% | REGRESSED" in gate
    assert json.loads((tmp_path / "figures.json").read_text())["figures"]["toy.time_ratio"] == 1.9
    bench_json = json.loads((tmp_path / "benchmarks.json").read_text())
    assert bench_json["benchmarks"][0]["stats"]["rounds"] == 9  # the three measurements' rounds


def test_main_exit_status_and_table(monkeypatch, tmp_path, capsys):
    _synthetic(monkeypatch, [1.1])
    path = tmp_path / "base.json"
    path.write_text(json.dumps(_toy_baseline()))
    assert regress.main(["--only", "toy", "--baseline", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "regression gate: pass (0 regressed of 2 figures)" in capsys.readouterr().out
    _synthetic(monkeypatch, [3.0, 3.0, 3.0])
    assert regress.main(["--only", "toy", "--baseline", str(path), "--out", str(tmp_path / "o")]) == 1
    out = capsys.readouterr().out
    assert "| toy.time_ratio | ratio | 1 | 3 | +200.0% |" in out and "regression gate: FAIL (1 regressed" in out


def test_update_baseline_keeps_other_machines_and_benchmarks(monkeypatch, tmp_path):
    path = tmp_path / "base.json"
    file = _toy_baseline(5.0)
    here = next(iter(file["machines"]))
    file["machines"][here]["figures"]["grid_run.compiles"] = {"kind": "count", "value": 0.0, "tolerance": 0.0}
    file["machines"]["elsewhere"] = {"measured": "then", "figures": {}}
    path.write_text(json.dumps(file))
    _synthetic(monkeypatch, [1.0, 1.2])
    regress.update_baseline(path, ["toy"], 1, 2, lambda s: None)
    written = json.loads(path.read_text())
    assert set(written["machines"]) == {here, "elsewhere"}
    figures = written["machines"][here]["figures"]
    assert figures["toy.time_ratio"]["value"] == pytest.approx(1.1) and "grid_run.compiles" in figures


# --- the gate itself (CI: `pytest -m regress -n 0`) -----------------------------------------

@pytest.mark.regress
@pytest.mark.xdist_group("regress")  # one after the other, even under -n auto: timings alone
def test_gate_passes_on_this_tree(tmp_path):
    """The whole benchmark set against the committed baseline: what CI runs after the tests."""
    code = regress.main(["--out", str(tmp_path)])
    gate = (tmp_path / "gate.md").read_text()
    print("\n" + gate)
    assert code == 0, gate


@pytest.mark.regress
@pytest.mark.xdist_group("regress")  # one after the other, even under -n auto: timings alone
def test_planted_slowdown_fails_the_gate(monkeypatch, tmp_path):
    """The attention benchmark measured as it is (a fresh baseline in this process, so any
    machine will do), then with the kernel slowed by an injected second pass over the same
    keys (twice the FLOPs) that waits for the first: the gate fails on its time ratio and on
    nothing else; unchanged, it passes. (A second pass independent of the first ran beside it
    on XLA:CPU's concurrent thunks and measured only +21% once: not a planted slowdown the
    25% tolerance is sure to see.)"""
    from kernels import attention

    results = benchmarks.measure(["attention_recall"], 5)
    env = regress.environment()
    baseline = regress.new_baseline([benchmarks.flat(results)], env)
    file = {"machines": {regress.machine(env): baseline}}
    ok, _, _ = regress.run_gate(["attention_recall"], 5, tmp_path / "same", 2, file, lambda s: None)
    assert ok, (tmp_path / "same" / "gate.md").read_text()
    original = attention.recall

    def slowed(Q, K, V, **kw):
        first = original(Q, K, V, **kw)
        # The second pass reads the first's output (0 * x is not folded away for floats), so
        # it runs after it; the answer is the first pass's, unchanged.
        return first + 0 * original(Q + 0 * first[:, :1], K, V, **kw)

    monkeypatch.setattr(attention, "recall", slowed)
    ok, verdicts, _ = regress.run_gate(["attention_recall"], 5, tmp_path / "slow", 2, file, lambda s: None)
    gate = (tmp_path / "slow" / "gate.md").read_text()
    print("\n" + gate)
    assert not ok
    assert [v.name for v in verdicts if not v.ok] == ["attention_recall.time_ratio"], gate


def test_a_benchmark_that_fails_fails_the_gate_and_the_others_still_run(monkeypatch, tmp_path):
    _synthetic(monkeypatch, [1.0])

    def broken(rounds):
        raise RuntimeError("the memory benchmark's process failed: ['Killed']")

    monkeypatch.setitem(benchmarks.BENCHMARKS, "broken", benchmarks.Benchmark("broken", "", broken, {}))
    ok, verdicts, results = regress.run_gate(["broken", "toy"], 1, tmp_path, 0, _toy_baseline(), lambda s: None)
    assert not ok and "toy" in results
    (bad,) = [v for v in verdicts if not v.ok]
    assert bad.name == "broken" and bad.kind == "error" and "RuntimeError: the memory benchmark's process" in bad.note
    assert "| broken | error |" in (tmp_path / "gate.md").read_text()


def test_unknown_flags_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        regress.main(["--rounds", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.regress: error: argument --rounds") and err.count("\n") == 1
