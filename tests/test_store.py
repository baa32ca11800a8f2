"""The result store: atomic parts, merge in cell order with the manifest in the schema,
reading an unfinished run, and run directories that never collide."""

from __future__ import annotations

import errno
import json
import os
import threading
import time

import pyarrow.parquet as pq
import pytest

from bench import store


def _row(cell_id: str, seed: int, cos: float) -> dict:
    return dict(run_id="r", cell_id=cell_id, kernel="pinv", patterns="gaussian", dtype="float32", d=8, n=4, dv=8,
                noise=0.0, seed=seed, cos_mean=cos, status="ok")


def test_parts_merge_in_cell_order_with_the_manifest_in_the_schema(tmp_path):
    run_dir = store.new_run_dir(tmp_path)
    store.write_part(run_dir, "b", [_row("b", 0, 0.5)])
    store.write_part(run_dir, "a", [_row("a", 0, 0.25), _row("a", 1, 0.75)])
    assert store.finished_cells(run_dir) == {"a", "b"}
    assert not any(p.name.startswith(".") for p in (run_dir / store.PARTS).iterdir())  # no temp files left
    table = store.merge(run_dir, {"run_id": run_dir.name, "x": 1}, ["a", "b", "missing"])
    assert table.column("cell_id").to_pylist() == ["a", "a", "b"]
    assert table.schema.names == store.SCHEMA.names
    meta = pq.read_schema(run_dir / store.RESULTS).metadata
    assert json.loads(meta[b"manifest"])["x"] == 1
    assert list(store.load_results(run_dir)["cos_mean"]) == [0.25, 0.75, 0.5]


def test_the_part_writer_writes_in_the_background_in_order_and_hands_back_pending_rows(tmp_path, monkeypatch):
    run_dir = store.new_run_dir(tmp_path)
    release, order = threading.Event(), []
    real = store.write_part

    def slow(run_dir, cell_id, rows):
        assert release.wait(10), "the writer was never released"
        order.append(cell_id)
        real(run_dir, cell_id, rows)

    monkeypatch.setattr(store, "write_part", slow)
    writer = store.PartWriter(run_dir)
    writer.submit("b", [_row("b", 0, 0.5)])
    writer.submit("a", [_row("a", 0, 0.25)])  # returns while "b" is still being written
    assert writer.rows("a") == [_row("a", 0, 0.25)] and writer.rows("c") is None
    assert store.finished_cells(run_dir) == set()
    release.set()
    writer.close()
    assert order == ["b", "a"] and store.finished_cells(run_dir) == {"a", "b"}
    assert writer.rows("a") is None  # on disk now: read it from there


def test_a_failed_part_write_stops_later_ones_and_is_raised_in_the_sweep_s_thread(tmp_path, monkeypatch):
    run_dir = store.new_run_dir(tmp_path)
    real = store.write_part
    failed = threading.Event()

    def fills_up(run_dir, cell_id, rows):
        if cell_id == "b":
            failed.set()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(run_dir, cell_id, rows)

    monkeypatch.setattr(store, "write_part", fills_up)
    writer = store.PartWriter(run_dir)
    for cell_id in "abc":
        writer.submit(cell_id, [_row(cell_id, 0, 0.5)])
    assert failed.wait(10)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert store.finished_cells(run_dir) == {"a"}  # still a prefix of the finished cells
    writer = store.PartWriter(run_dir)
    writer.submit("a", [_row("a", 0, 0.5)])
    while writer.rows("a") is not None:
        time.sleep(0.01)
    monkeypatch.setattr(store, "write_part", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    writer.submit("b", [_row("b", 0, 0.5)])
    while writer.rows("b") is not None:
        time.sleep(0.01)
    with pytest.raises(OSError, match="disk full"):
        writer.submit("c", [_row("c", 0, 0.5)])


def test_an_unfinished_run_reads_from_its_parts_and_an_empty_one_says_so(tmp_path):
    run_dir = store.new_run_dir(tmp_path)
    with pytest.raises(store.StoreError, match="no results yet"):
        store.load_results(run_dir)
    store.write_part(run_dir, "a", [_row("a", 0, 0.5)])
    assert list(store.load_results(run_dir)["cell_id"]) == ["a"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"

    def broken(fd, *args, **kwargs):
        os.close(fd)
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "fdopen", broken)
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write_bytes(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_run_directories_never_collide_and_manifests_round_trip(tmp_path):
    dirs = {store.new_run_dir(tmp_path) for _ in range(20)}
    assert len(dirs) == 20 and all((d / store.PARTS).is_dir() for d in dirs)
    d = next(iter(dirs))
    store.write_manifest(d, {"run_id": d.name, "cell_ids": store.CELL_IDS})
    assert store.read_manifest(d) == {"run_id": d.name, "cell_ids": store.CELL_IDS}
    with pytest.raises(store.StoreError, match="not a run directory"):
        store.read_manifest(tmp_path)
