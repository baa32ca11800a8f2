"""The run pipeline: one sequence, one manifest held in memory and written as it changes; a
resume picks the run's own spec and refuses flags that contradict it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from bench import pipeline, store
from bench.spec import SpecError, SweepSpec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    spec = SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 16), seeds=1)
    run = pipeline.start(spec, tmp_path_factory.mktemp("out"), ["test"])
    return run, pipeline.execute(run, report=False)


def test_the_manifest_on_disk_and_in_the_results_is_the_one_held_in_memory(finished):
    run, manifest = finished
    assert manifest is run.manifest and manifest["status"] == "complete" and manifest["cell_ids"] == store.CELL_IDS
    assert store.read_manifest(run.run_dir) == json.loads(json.dumps(manifest))
    table = pq.read_table(run.run_dir / store.RESULTS)
    assert json.loads(table.schema.metadata[b"manifest"]) == json.loads(json.dumps(manifest))
    assert table.num_rows == 2 and manifest["cell_order"] == [c.id for c in run.spec.cells(auto_method="gram64")]
    assert not (run.run_dir / "report.md").exists()  # report=False stops after the merge


def test_a_resume_runs_the_stored_spec_and_recomputes_nothing(finished):
    run, _ = finished
    again = pipeline.resume(run.run_dir, {"seeds": 1})
    assert again.spec == run.spec and len(again.manifest["resumed"]) == 1
    manifest = pipeline.execute(again, report=False)
    assert manifest["compiled_programs"] == run.manifest["compiled_programs"]  # every cell read back


def test_a_resume_refuses_what_it_cannot_honour(finished, tmp_path):
    run, _ = finished
    with pytest.raises(SpecError, match="--d 16 contradicts the run's d=8"):
        pipeline.resume(run.run_dir, {"d": (16,)})
    with pytest.raises(SpecError, match="--preset quick contradicts"):
        pipeline.resume(run.run_dir, {}, preset="quick")
    with pytest.raises(SpecError, match="no such directory"):
        pipeline.resume(tmp_path / "missing", {})
    with pytest.raises(store.StoreError, match="not a run directory"):
        pipeline.resume(tmp_path, {})
