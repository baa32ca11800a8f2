"""One run, start to end, in one direction:

    spec -> run directory + manifest -> sweep -> merge -> hallucination curve -> figures -> report

This module owns that sequence and the manifest: it builds the manifest, keeps it in memory
and writes it (atomically) whenever a step changes it; the sweep gets it with a callback that
saves it, and nothing reads it back from disk during a run. The command line is argparse ->
spec -> here; tests and notebooks can call ``start``/``resume`` and ``execute`` directly.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from bench import store
from bench.cluster import ALONE, Cluster
from bench.spec import SpecError, SweepSpec


def default_compile_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "associative-memory-bench" / "jax"


class Prepared(NamedTuple):
    """A run directory ready to (re)run: its spec, its manifest as held in memory, and the lock
    that keeps any other run or resume out of it until ``execute`` ends. In a multi-process
    run (cluster), process 0 holds the lock and writes the manifest; the others hold no lock
    and keep a read-only copy."""

    spec: SweepSpec
    run_dir: Path
    manifest: dict[str, Any]
    lock: store.RunLock | None
    cluster: Cluster = ALONE


def start(spec: SweepSpec, out: Path, command: Sequence[str], compile_cache: Path | None = None,
          cluster: Cluster = ALONE) -> Prepared:
    """A fresh run directory under ``out`` with its manifest (spec, environment, the matmul
    rate measured now) on disk before any cell runs. compile_cache: JAX's persistent cache, or
    None for none. In a multi-process run, process 0 creates it and tells the others its name."""
    from bench import environment

    environment.configure_jax()
    _compile_cache(compile_cache)
    from bench import sweep

    if not spec.nested:
        sweep.check_fits(spec)
    if not cluster.leader:
        run_dir = Path(cluster.fetch("run_dir", "the run directory"))
        return Prepared(spec, run_dir, store.read_manifest(run_dir), None, cluster)
    rate = environment.matmul_gflops(spec.dtype)
    manifest: dict[str, Any] = {
        "spec": spec.to_dict(), "status": "running", "started": _now(), "ended": None,
        "cell_ids": store.CELL_IDS, "command": list(command), **environment.describe(),
        "matmul_gflops": rate,
        # what --method auto means for this run, decided once: a resume (and every process of
        # a multi-process run) reads it from here, so its cells keep their ids on any machine
        **environment.auto_method(rate if spec.dtype == "float32" else None),
    }
    run_dir = store.new_run_dir(out, manifest)  # appears with its manifest, never without
    lock = store.RunLock(run_dir)
    cluster.publish("run_dir", str(run_dir.resolve()))
    return Prepared(spec, run_dir, manifest, lock, cluster)


def resume(run_dir: Path, overrides: dict[str, Any], preset: str | None = None,
           compile_cache: Path | None = None, cluster: Cluster = ALONE) -> Prepared:
    """An interrupted (or finished) run, to finish. Flags given again must agree with the run's
    own spec: SpecError names the one that does not. Any number of processes may resume a run,
    whatever number started it; process 0 does what a single process does, the others read."""
    if not run_dir.is_dir():
        raise SpecError(f"--resume {run_dir}: no such directory; pass a run directory under your --out")
    store.check_run_dir(run_dir)
    if not cluster.leader:
        manifest = store.read_manifest(run_dir)
        stored = _stored_spec(run_dir, manifest, overrides, preset)
        from bench import environment

        environment.configure_jax()
        _compile_cache(compile_cache)
        return Prepared(stored, run_dir, manifest, None, cluster)
    for path in (run_dir, run_dir / store.PARTS):
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise store.StoreError(f"{path} is not writable; make it writable (or copy the run somewhere that is) "
                                   "and resume again")
    # Locked before the manifest is read: a run that held the directory until now has finished
    # writing it, so nothing it wrote is lost when this resume writes the manifest again.
    lock = store.RunLock(run_dir)
    try:
        manifest = store.read_manifest(run_dir)
        stored = _stored_spec(run_dir, manifest, overrides, preset)
        for part in store.set_aside_damaged_parts(run_dir):
            print(f"run_all.py: warning: {part.name} could not be read (or holds other columns); moved to "
                  f"{part.parent}, its cell is computed again", file=sys.stderr)
        from bench import environment

        environment.configure_jax()
        _compile_cache(compile_cache)
        manifest["resumed"] = [*manifest.get("resumed", []), _now()]
        manifest["status"] = "running"
        store.write_manifest(run_dir, manifest)
    except BaseException:
        lock.release()
        raise
    return Prepared(stored, run_dir, manifest, lock, cluster)


def _stored_spec(run_dir: Path, manifest: dict[str, Any], overrides: dict[str, Any], preset: str | None) -> SweepSpec:
    """The run's own spec; SpecError when a flag given again contradicts it."""
    try:
        stored = SweepSpec.from_dict(manifest["spec"])
    except (KeyError, TypeError) as e:
        raise store.StoreError(f"{run_dir}/{store.MANIFEST} has no readable spec ({e}); the run directory is "
                               "damaged") from e
    if preset is not None and preset != stored.preset:
        raise SpecError(f"--preset {preset} contradicts the run's preset {stored.preset}; drop the flag to resume")
    merged = SweepSpec.from_dict({**stored.to_dict(), **overrides})
    for name in overrides:
        if getattr(merged, name) != getattr(stored, name):
            raise SpecError(f"--{name.replace('_', '-')} {_show(getattr(merged, name))} contradicts the run's "
                            f"{name}={_show(getattr(stored, name))}; drop the flag to resume, or start a new run")
    return stored


def execute(run: Prepared, *, report: bool = True, hallucination: bool = True,
            progress: bool | None = None) -> dict[str, Any]:
    """Sweep every unfinished cell, merge the parts into results.parquet, then (report=True)
    measure the hallucination curve, draw the figures and write the report. Returns the
    final manifest. KeyboardInterrupt propagates with every finished cell kept on disk."""
    from bench import sweep

    spec, run_dir, manifest, lock, cluster = run
    try:
        mine = finished = None
        if cluster.processes > 1:
            if spec.capacity:
                raise SpecError("a capacity search runs in one process (each probe depends on the last); drop "
                                "--distributed")
            if cluster.leader:
                finished = store.finished_cells(run_dir)
                cluster.publish("finished", sorted(finished))
            else:
                finished = set(cluster.fetch("finished", "the list of finished cells"))
            owner, load = sweep.split_cells(spec, finished, cluster.processes, sweep.auto_method(manifest))
            mine = lambda cell: owner(cell) == cluster.process  # noqa: E731
            manifest["processes"] = cluster.processes
            manifest.setdefault("estimated_s_per_process", []).append([round(x, 1) for x in load])
        save = (lambda: store.write_manifest(run_dir, manifest)) if cluster.leader else (lambda: None)
        before = (manifest.get("compiled_programs", 0), manifest.get("compile_wait_s", 0.0),
                  manifest.get("baseline_programs", 0))
        if spec.nested:
            from bench import nested_sweep

            nested_sweep.run(spec, run_dir, manifest, save=save, progress=progress)
        else:
            sweep.run_sweep(spec, run_dir, manifest, save=save, progress=progress, mine=mine, finished=finished)
        if cluster.processes > 1:
            cluster.publish(f"done/{cluster.process}", [manifest["compiled_programs"] - before[0],
                                                         manifest["compile_wait_s"] - before[1],
                                                         manifest.get("baseline_programs", 0) - before[2]])
            # Process 0 merges only when every process has written its parts.
            cluster.barrier("sweep-done", cluster.barrier_timeout_s)
            if not cluster.leader:
                return manifest
            for p in range(1, cluster.processes):
                programs, wait, baselines = cluster.fetch(f"done/{p}", f"process {p}'s counts")
                manifest["compiled_programs"] += programs
                manifest["compile_wait_s"] += wait
                if baselines:
                    manifest["baseline_programs"] = manifest.get("baseline_programs", 0) + baselines
        manifest["status"] = "complete"
        manifest["ended"] = _now()
        store.write_manifest(run_dir, manifest)
        store.merge(run_dir, manifest, manifest["cell_order"])
        if report and spec.nested:
            from bench import nested_report, rundir

            nested_report.build(rundir.read(run_dir))
        elif report:
            from bench import plots, report as reports, rundir

            if hallucination:
                from bench import hallucination as curve

                curve.measure(run_dir)
            finished = rundir.read(run_dir)
            plots.draw_all(finished)
            reports.build(finished)
    finally:
        if lock is not None:
            lock.release()
    return manifest


def _compile_cache(path: Path | None) -> None:
    from bench import environment

    if path is not None:
        try:
            environment.enable_compile_cache(path)
        except OSError as e:  # a cache is an optimisation: go on without it
            print(f"run_all.py: warning: compile cache disabled ({e})", file=sys.stderr)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
