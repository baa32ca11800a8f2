"""Capacity search: the doubling-and-bisection algorithm on known answers, then end to end on
memories whose capacity is known (max over euclidean distances never fails on exact queries;
linear attention is the Hebbian memory, so their capacities agree)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench import capacity, cli, store
from conftest import sweep_into
from bench.spec import SweepSpec


def _step(at: int, low: float = 0.5):
    """A memory that holds exactly up to n = at."""
    calls = []

    def probe(n):
        calls.append(n)
        return capacity.Probe(n, 1.0 if n <= at else low, "ok")

    return probe, calls


@pytest.mark.parametrize("at", [1, 2, 3, 37, 64, 100, 1000, 4097])
def test_search_finds_a_step_to_its_resolution(at):
    probe, calls = _step(at)
    found = capacity.search(probe, 0.99, max_n=2**20)
    assert not found.capped and found.acc == 1.0
    assert at - max(1, at // capacity.RESOLUTION) <= found.capacity <= at
    if at < capacity.RESOLUTION * 2:
        assert found.capacity == at
    doubling = [2**i for i in range(int(math.log2(at)) + 2)]
    assert calls[: len(doubling)] == doubling  # doubling first, then bisection
    assert [p.n for p in found.probes] == calls
    assert len(calls) <= 2 * math.log2(at + 1) + 3


def test_search_reports_the_cap_and_a_failing_start():
    probe, calls = _step(10**9)
    found = capacity.search(probe, 0.99, max_n=1000)
    assert found.capped and found.capacity == 1000 and calls[-1] == 1000 and found.text(1, 1000) == ">= 1000"
    probe, calls = _step(3)
    found = capacity.search(probe, 0.99, max_n=1000, start=8)
    assert found.capacity == 0 and calls == [8] and found.text(8, 1000) == "< 8" and math.isnan(found.acc)


def test_a_probe_that_did_not_run_cleanly_counts_as_a_failure():
    found = capacity.search(lambda n: capacity.Probe(n, 1.0, "nan" if n > 5 else "ok"), 0.99, max_n=64)
    assert found.capacity == 5
    with pytest.raises(ValueError, match="start"):
        capacity.search(lambda n: capacity.Probe(n, 1.0, "ok"), 0.99, max_n=4, start=8)


def _capacity_run(tmp_path, **spec):
    spec = SweepSpec(capacity=True, seeds=2, **spec)
    run_dir = store.new_run_dir(tmp_path)
    manifest = sweep_into(spec, run_dir)
    return run_dir, manifest, store.load_capacity(run_dir)


@pytest.mark.slow
def test_known_capacities_end_to_end(tmp_path):
    run_dir, manifest, found = _capacity_run(
        tmp_path, kernels=("attention", "hebbian"), similarity=("euclidean", "dot"), separation=("max", "identity"),
        d=(16,), max_n=3000)
    assert set(store.CAPACITY_SCHEMA.names) == set(found.columns)
    by = {(r.kernel, r.similarity, r.separation): r for r in found.itertuples()}
    exact = by[("attention", "euclidean", "max")]
    assert exact.capped and exact.capacity_text == ">= 3000" and exact.capacity == 3000
    assert list(exact.probes_n) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3000]
    assert np.all(np.asarray(exact.probes_acc) == 1.0)
    hebbian = found[found.kernel == "hebbian"].iloc[0]
    linear = by[("attention", "dot", "identity")]
    assert 1 <= hebbian.capacity < 3000 and not hebbian.capped
    assert linear.capacity == hebbian.capacity and list(linear.probes_n) == list(hebbian.probes_n)
    assert hebbian.acc_at_capacity >= 0.99
    # The probes are cells of the run: their rows are the run's results, in the order run.
    rows = store.load_results(run_dir)
    assert len(rows) == 2 * len(manifest["cell_order"])
    assert set(rows["n"][rows["kernel"] == "hebbian"]) == set(hebbian.probes_n)


def test_a_resumed_search_reuses_its_probes(tmp_path):
    run_dir, manifest, first = _capacity_run(tmp_path, kernels=("pinv",), d=(8,), max_n=64)
    parts = {p.name: p.stat().st_mtime_ns for p in (run_dir / store.PARTS).iterdir()}
    spec = SweepSpec.from_dict(manifest["spec"])
    again = sweep_into(spec, run_dir, store.read_manifest(run_dir))
    assert again["compiled_programs"] == 0  # nothing ran: every probe was read back
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / store.PARTS).iterdir()} == parts
    pd.testing.assert_frame_equal(store.load_capacity(run_dir).drop(columns="run_id"), first.drop(columns="run_id"))
    assert first["capacity"][0] >= 8  # pinv recalls exactly while n <= d


@pytest.mark.slow
def test_capacity_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["--kernels", "attention", "--similarity", "scaled_dot", "--separation", "topk", "--topk", "4",
                     "--d", "8,16", "--capacity", "--max-n", "2^9", "--seeds", "2", "--progress", "off",
                     "--no-hallucination", "--out", str(out), "--no-compile-cache"])
    assert code == 0
    run_dir = next(out.iterdir())
    found = pd.read_parquet(run_dir / store.CAPACITY)
    assert list(found["start_n"]) == [4, 4] and all(p[0] == 4 for p in found["probes_n"])
    assert (run_dir / "figures" / "capacity_vs_d.png").is_file()
    md = (run_dir / "report.md").read_text()
    assert "## Capacity search" in md and "attention scaled_dot topk beta=1 topk=4" in md
