"""The result store: run directories, one parquet part per finished cell, the merged table,
and the run manifest. Everything written is written to a temporary name and renamed, so a
reader (or a killed run) never sees half a file.

Layout of a run, ``<out>/<run_id>/``: manifest.json, parts/<cell id>.parquet (one per
finished cell), results.parquet (all parts merged, with the manifest in its schema
metadata), capacity.parquet (a --capacity run's search results), hallucination.parquet (the fuzzy
store's curve), figures/, report.html, report.md. ``bench.rundir`` reads them back in one call.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from kernels.names import KNOBS

MANIFEST = "manifest.json"
RESULTS = "results.parquet"
PARTS = "parts"
FIGURES = "figures"
HALLUCINATION = "hallucination.parquet"
LOCK = ".lock"
DAMAGED = "damaged"
# The process's umask, read once at import (reading it means setting it), so files are
# created with the permissions the user asked for.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

# The one place the result columns are defined. Column docs live in the README.
SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("cell_id", pa.string()),
    ("kernel", pa.string()),
    # One column per memory knob (kernels.names), null where a memory does not read it.
    *[(k.name, {int: pa.int64(), float: pa.float64(), str: pa.string()}[k.kind]) for k in KNOBS.values()],
    ("mask", pa.float64()),
    ("patterns", pa.string()),
    ("dtype", pa.string()),
    ("d", pa.int64()),
    ("n", pa.int64()),
    ("dv", pa.int64()),
    ("noise", pa.float64()),
    ("seed", pa.int64()),
    ("cos_mean", pa.float64()),
    ("cos_std", pa.float64()),
    ("dist_mean", pa.float64()),
    ("acc", pa.float64()),
    ("acc_queries", pa.int64()),
    ("baseline_cos", pa.float64()),
    ("baseline_dist", pa.float64()),
    ("baseline_cos_theory", pa.float64()),
    ("baseline_dist_theory", pa.float64()),
    ("theory_cos", pa.float64()),
    ("method", pa.string()),
    ("compile_s", pa.float64()),
    ("run_s", pa.float64()),
    ("flops", pa.float64()),
    ("gflops", pa.float64()),
    ("status", pa.string()),
    ("error", pa.string()),
    # Nested-dictionary cells (kernel "nested", bench.nested_sweep); null in every other row.
    ("form", pa.string()),
    ("depth", pa.int64()),
    ("branching", pa.int64()),
    ("collision", pa.float64()),
    ("mode", pa.string()),
    ("composition", pa.string()),
    ("path_mass", pa.float64()),
    ("path_mass_theory", pa.float64()),
    ("theory_acc", pa.float64()),
    ("read_s", pa.float64()),
    ("sharing", pa.float64()),
    ("vary_branching", pa.bool_()),
    ("path_hit", pa.float64()),
    ("path_hit_theory", pa.float64()),
    ("path_hit_theory_low", pa.float64()),
])
# The columns of runs written before nested cells existed, and before their sharing, varying
# branching and beam-hit columns: their parts are read with the new columns null (resume, merge
# and bench.compare accept them).
_BEFORE_NESTED = pa.schema(list(SCHEMA)[:SCHEMA.get_field_index("form")])
_BEFORE_BEAM_HITS = pa.schema(list(SCHEMA)[:SCHEMA.get_field_index("sharing")])
# The capacity table of a --capacity run: one row per (memory setting, patterns, d, noise, mask).
SETTING_FIELDS = ("kernel", *KNOBS, "patterns", "dtype", "noise", "mask")
CAPACITY_SCHEMA = pa.schema(
    [(name, SCHEMA.field(name).type) for name in ("run_id",) + SETTING_FIELDS + ("d", "dv")] + [
        ("threshold", pa.float64()),    # mean accuracy over seeds that must hold
        ("max_n", pa.int64()),          # the search's cap
        ("start_n", pa.int64()),        # the first probe (k for top-k)
        ("capacity", pa.int64()),       # largest probed n that held; 0 when even start_n failed
        ("capped", pa.bool_()),         # True: held at max_n, so the capacity is >= max_n
        ("capacity_text", pa.string()), # "1234", ">= 65536" or "< 8"
        ("acc_at_capacity", pa.float64()),
        ("theory_scale", pa.float64()), # analytic capacity scale where one is known (bench.theory)
        ("probes_n", pa.list_(pa.int64())),       # every probe, in the order run
        ("probes_acc", pa.list_(pa.float64())),
        ("probes_status", pa.list_(pa.string())),
    ])
CAPACITY = "capacity.parquet"
# Columns that differ between two runs of the same spec on the same machine.
TIMING_COLUMNS = ("run_id", "compile_s", "run_s", "gflops")
STATUSES = ("ok", "nan", "error", "skipped")
# The cell-id scheme of new runs (manifest key "cell_ids"): 2 hashes every setting of a Cell
# (Cell.id); runs whose manifest has no such key name their parts by Cell.legacy_id.
CELL_IDS = 2


class StoreError(ValueError):
    """A run directory that cannot be used; the message names the path and the fix."""


def new_run_dir(out: Path, manifest: dict[str, Any] | None = None) -> Path:
    """Create a fresh, uniquely named run directory under ``out`` holding ``manifest`` (its
    ``run_id`` filled in) and an empty parts/. The directory is built under a hidden name and
    renamed into place, so a run directory never exists without its manifest (a kill at any
    moment leaves either nothing or a resumable run), and two runs started at the same moment
    never share one."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".new-run-"))
    except OSError as e:
        raise StoreError(f"--out {out}: cannot create a run directory there ({e.strerror}); pass a directory you "
                         "can write to") from e
    try:
        os.chmod(staging, 0o777 & ~_UMASK)
        (staging / PARTS).mkdir()
        while True:
            run_dir = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            write_manifest(staging, {**(manifest or {}), "run_id": run_dir.name})
            if manifest is not None:
                manifest["run_id"] = run_dir.name
            try:
                os.rename(staging, run_dir)  # atomic; refused when the name exists and is not empty
            except OSError:
                if run_dir.exists():
                    continue
                raise
            return run_dir
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class RunLock:
    """An advisory lock on a run directory (``flock`` on RUN_DIR/.lock), held while a run or a
    resume works in it, released when the process ends however it ends. A second run or resume
    of the same directory is refused instead of computing every cell twice."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        try:
            self._file = open(self.path, "a+")
        except OSError as e:
            raise StoreError(f"{run_dir}: cannot lock it ({e.strerror}); resume from an account that can write "
                             "there") from e
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise StoreError(f"{run_dir} is in use by {holder}; wait for it to finish (or stop it), then resume "
                             "it") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot hold a run, creating nothing."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StoreError(f"--out {out}: {probe} is not a directory; pass a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StoreError(f"--out {out}: {probe} is not writable; pass a directory you can write to")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path``, written to a temporary name and renamed (readers never see half a
    file), with the permissions of a plain ``open`` (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# The type of every manifest field the suite reads back (others are kept as they are).
_MANIFEST_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "spec": (dict,), "status": (str,), "started": (str, type(None)), "ended": (str, type(None)),
    "cell_ids": (int,), "resumed": (list,), "compiled_programs": (int,), "baseline_programs": (int,),
    "compile_wait_s": (int, float),
    "cell_order": (list,), "matmul_gflops": (int, float, type(None)), "command": (list,),
    "auto_method": (str,), "auto_method_reason": (str,), "float64_over_float32": (int, float, type(None)),
    "lapack_threads": (int, type(None)),
}


def check_run_dir(run_dir: Path) -> None:
    """StoreError unless ``run_dir`` holds a manifest (is a run directory)."""
    if not (run_dir / MANIFEST).is_file():
        raise StoreError(f"{run_dir} is not a run directory (no {MANIFEST}); pass a directory that a run wrote")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest, checked field by field: StoreError names a damaged field and the fix."""
    check_run_dir(run_dir)
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); the run directory is damaged") from e
    except OSError as e:
        raise StoreError(f"{path}: cannot read it ({e.strerror}); resume from an account that can read it") from e
    if not isinstance(manifest, dict):
        raise StoreError(f"{path} holds a {type(manifest).__name__}, not an object; the run directory is damaged")
    for name, types in _MANIFEST_FIELDS.items():
        value = manifest.get(name)
        if name in manifest and (not isinstance(value, types) or isinstance(value, bool)):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise StoreError(f"{path}: field {name!r} is {json.dumps(value)[:60]}, expected {allowed}; repair the "
                             "field (or remove it, except spec) and resume again")
    return manifest


def load_converters() -> None:
    """Import what the first part's conversion imports: pyarrow converts Python values through
    its pandas shim, which imports pandas (0.8 s alone here; 1.8 s beside the compile threads'
    tracing). PartWriter does this on its own thread as it starts."""
    pa.array([0.0])


class PartWriter:
    """Writes finished cells' parts on a thread of its own, in the order given, so the sweep
    runs its next cell while a part is written (0.68 s for the classic grid's 70 parts) and
    while the first conversion imports pandas (load_converters, done first). A write that
    fails stops every later one, so the parts on disk are still a prefix of the finished
    cells; the failure is raised in the sweep's thread by the next ``submit`` or by ``close``.
    ``rows`` hands back a part's rows until it is on disk (a capacity search reads its
    probes again)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parts")
        self._pending: dict[str, tuple[Future, list[dict[str, Any]]]] = {}
        self._failure: BaseException | None = None
        self._pool.submit(load_converters)

    def submit(self, cell_id: str, rows: list[dict[str, Any]]) -> None:
        """Queue a part (raises the failure of an earlier write instead)."""
        self._forget_written()
        if self._failure is not None:
            raise self._failure
        self._pending[cell_id] = (self._pool.submit(self._write, cell_id, rows), rows)

    def rows(self, cell_id: str) -> list[dict[str, Any]] | None:
        """The rows of a part not yet known to be written, else None (read it from disk)."""
        self._forget_written()
        pending = self._pending.get(cell_id)
        return None if pending is None else pending[1]

    def close(self) -> None:
        """Wait for every queued part; then raise the first failed write, if any."""
        self._pool.shutdown(wait=True)
        self._pending.clear()
        if self._failure is not None:
            raise self._failure

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        """close(); where an error is already on its way out, it wins over a failed write (the
        parts of the cells that finished reach the disk either way)."""
        try:
            self.close()
        except Exception:
            if kind is None:
                raise

    def _write(self, cell_id: str, rows: list[dict[str, Any]]) -> None:
        if self._failure is None:
            try:
                write_part(self.run_dir, cell_id, rows)
            except BaseException as e:  # noqa: BLE001 - handed to the sweep's thread
                self._failure = e

    def _forget_written(self) -> None:
        for cell_id in [c for c, (future, _) in self._pending.items() if future.done()]:
            del self._pending[cell_id]


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def atomic_write_parquet(path: Path, table: pa.Table) -> Path:
    """A parquet file written to a temporary name, then renamed."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_part(run_dir: Path, cell_id: str, rows: list[dict[str, Any]]) -> Path:
    """One finished cell's rows, written at once (temp name, then rename)."""
    return atomic_write_parquet(run_dir / PARTS / f"{cell_id}.parquet", rows_to_table(rows))


def write_capacity(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    return atomic_write_parquet(run_dir / CAPACITY, pa.Table.from_pylist(rows, schema=CAPACITY_SCHEMA))


def load_capacity(run_dir: Path):
    """The capacity table as pandas, or None when the run searched no capacity."""
    path = run_dir / CAPACITY
    return pq.read_table(path).to_pandas() if path.is_file() else None


def read_part(run_dir: Path, cell_id: str) -> list[dict[str, Any]]:
    return pq.read_table(run_dir / PARTS / f"{cell_id}.parquet", schema=SCHEMA).to_pylist()


def finished_cells(run_dir: Path) -> set[str]:
    parts = run_dir / PARTS
    if not parts.is_dir():
        raise StoreError(f"{parts} is not a directory; the run directory is damaged: move {parts} aside and resume "
                         "(its cells are computed again)")
    return {p.stem for p in parts.glob("*.parquet")}


def set_aside_damaged_parts(run_dir: Path) -> list[Path]:
    """Move every part that cannot be read, holds no rows or has another schema to
    RUN_DIR/damaged/ (kept for inspection, never merged), so the resume computes those cells
    again. Returns where they went."""
    finished_cells(run_dir)  # parts/ must be a directory
    moved = []
    for path in sorted((run_dir / PARTS).glob("*.parquet")):
        try:
            meta = pq.ParquetFile(path)
            good = meta.metadata.num_rows > 0 and any(meta.schema_arrow.equals(known, check_metadata=False)
                                                      for known in (SCHEMA, _BEFORE_NESTED, _BEFORE_BEAM_HITS))
        except (pa.ArrowException, OSError, ValueError):
            good = False
        if not good:
            (run_dir / DAMAGED).mkdir(exist_ok=True)
            os.replace(path, run_dir / DAMAGED / path.name)
            moved.append(run_dir / DAMAGED / path.name)
    return moved


def merge(run_dir: Path, manifest: dict[str, Any], cell_order: list[str]) -> pa.Table:
    """All parts, in the spec's cell order, as results.parquet with the manifest in its schema
    metadata (key b"manifest")."""
    parts = [pq.read_table(run_dir / PARTS / f"{cid}.parquet", schema=SCHEMA) for cid in cell_order
             if (run_dir / PARTS / f"{cid}.parquet").exists()]
    table = pa.concat_tables(parts) if parts else SCHEMA.empty_table()
    table = table.replace_schema_metadata({"manifest": json.dumps(manifest, sort_keys=True)})
    atomic_write_parquet(run_dir / RESULTS, table)
    return table


def load_results(run_dir: Path):
    """The run table as pandas (merged results.parquet, or the parts of an unfinished run)."""
    import pandas as pd

    path = run_dir / RESULTS
    if path.is_file():
        return pq.read_table(path).to_pandas()
    parts = sorted((run_dir / PARTS).glob("*.parquet"))
    if not parts:
        raise StoreError(f"{run_dir} has no results yet; run a sweep into it first")
    return pd.concat([pq.read_table(p, schema=SCHEMA).to_pandas() for p in parts], ignore_index=True)
