"""The sweep driver in-process: failing and oversized cells are recorded and the sweep goes
on; compile once per family; the theory and knob columns land in the rows."""

from __future__ import annotations

import math
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import kernels
from kernels import streams
from bench import environment, rundir, store, sweep
from conftest import sweep_into
from bench import spec as spec_module
from bench.spec import SweepSpec


def _run(spec: SweepSpec, tmp_path):
    run_dir = store.new_run_dir(tmp_path)
    manifest = sweep_into(spec, run_dir)
    return store.load_results(run_dir).sort_values(["kernel", "d", "n", "seed"]).reset_index(drop=True), manifest


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = sweep.cell_args

    def broken(cell, family, mesh):
        if cell.n == 8:
            raise RuntimeError("synthetic failure at n = 8")
        return real(cell, family, mesh)

    monkeypatch.setattr(sweep, "cell_args", broken)
    df, _ = _run(SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 8, 16), seeds=2), tmp_path)
    assert list(df["status"]) == ["ok", "ok", "error", "error", "ok", "ok"]
    assert df.loc[df.n == 8, "error"].str.contains("synthetic failure").all()
    assert df.loc[df.n == 8, "cos_mean"].isna().all()


def test_a_cell_too_big_for_the_device_is_skipped_with_what_it_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "device_memory_bytes", lambda: 1000)
    df, _ = _run(SweepSpec(kernels=("pinv",), d=(8,), n=(4,), seeds=1), tmp_path)
    assert list(df["status"]) == ["skipped"]
    assert "needs about" in df["error"][0] and "GiB" in df["error"][0]


def test_rows_carry_knobs_theory_and_timings(tmp_path):
    spec = SweepSpec(kernels=("ridge", "delta"), d=(16,), n=(8, 64), seeds=2, lam=(0.5, 2.0), passes=(1, 3))
    df, manifest = _run(spec, tmp_path)
    assert len(df) == (2 + 2) * 2 * 2
    ridge, delta = df[df.kernel == "ridge"], df[df.kernel == "delta"]
    assert set(ridge["lam"]) == {0.5, 2.0} and ridge["eta"].isna().all() and ridge["passes"].isna().all()
    assert set(delta["passes"]) == {1, 3} and delta["lam"].isna().all() and delta["theory_cos"].isna().all()
    assert ridge["theory_cos"].notna().all()
    assert manifest["compiled_programs"] == 2  # one per (kernel, d): knobs and n are traced
    assert (df["flops"] > 0).all() and (df["run_s"] > 0).all() and (df["gflops"] > 0).all()
    # More passes of the delta rule recall better when the keys fit (n = 8 < d = 16).
    fit = delta[delta.n == 8].groupby("passes")["cos_mean"].mean()
    assert fit[3] > fit[1]


def test_random_baselines_are_computed_once_per_stream_with_the_numbers_of_a_cell_program(tmp_path):
    """The cell programs of a sweep leave the random baselines to one program per pair stream
    (they depend on the stream and chunk only); the rows carry the numbers a cell program that
    computes them itself gives, for matrix and attention memories alike."""
    spec = SweepSpec(kernels=("pinv", "hebbian", "attention"), d=(16, 32), n=(8, 64), seeds=2)
    df, manifest = _run(spec, tmp_path)
    assert (df["status"] == "ok").all()
    assert manifest["compiled_programs"] == 3 * 2 and manifest["baseline_programs"] == 2  # one per d
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    for d in (16, 32):
        family = kernels.MatrixFamily("hebbian", d, d, "gaussian", chunk=kernels.default_chunk(d, d))
        assert family.baseline  # the kernels' own default computes them in the cell program
        own = kernels.run_matrix_cell(family, seeds, *kernels.matrix_args(family, 8, 0.0))
        for kernel in ("pinv", "hebbian", "attention"):
            rows = df[(df.kernel == kernel) & (df.d == d)]
            for n in (8, 64):
                at = rows[rows.n == n].sort_values("seed")
                np.testing.assert_array_equal(at["baseline_cos"], np.asarray(own.baseline_cos))
                np.testing.assert_array_equal(at["baseline_dist"], np.asarray(own.baseline_dist))
    # The baseline program's time is charged to the first cell of its stream, and only to it.
    assert (df["compile_s"] > 0).sum() == 3 * 2 * 2  # the first cell (both seeds) of each family


def test_seeds_that_do_not_divide_the_devices_are_padded_and_dropped(tmp_path):
    df, _ = _run(SweepSpec(kernels=("hebbian",), d=(8,), n=(16,), seeds=3), tmp_path)
    assert list(df["seed"]) == [0, 1, 2]
    assert df["cos_mean"].nunique() == 3
    assert all(math.isfinite(v) for v in df["cos_mean"])


@pytest.mark.slow
def test_glove_patterns_run_side_by_side_with_gaussian(tmp_path):
    from bench import plots

    spec = SweepSpec(kernels=("pinv",), d=(16, 50), n=(8, 64), seeds=2, patterns=("gaussian", "glove"))
    df, _ = _run(spec, tmp_path)
    assert len(df) == 2 * 2 * 2 * 2 and (df["status"] == "ok").all()
    glove = df[df.patterns == "glove"]
    assert glove["theory_cos"].isna().all() and glove["baseline_dist_theory"].isna().all()
    assert (glove[glove.n == 8]["cos_mean"] > 0.9999).all()  # n < d: exact recall of real word vectors too
    assert (glove["baseline_cos"] > 0.005).all()  # word vectors share a mean direction: not symmetric
    # Each stream's baselines by their own program (the table passed in): the cell program's numbers.
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    table = sweep.glove_table(Mesh(np.array(jax.local_devices()), ("seeds",)))
    family = kernels.MatrixFamily("hebbian", 50, 50, kernels.TABLE, chunk=kernels.default_chunk(50, 50))
    own = kernels.run_matrix_cell(family, seeds, *kernels.matrix_args(family, 8, 0.0), table=table)
    for n in (8, 64):
        at = glove[(glove.d == 50) & (glove.n == n)].sort_values("seed")
        np.testing.assert_array_equal(at["baseline_cos"], np.asarray(own.baseline_cos))
    run_dir = next(tmp_path.iterdir())
    names = [p.name for p in plots.draw_all(rundir.read(run_dir))]
    assert "pinv_patterns_compared__noise=0.png" in names


def test_glove_spec_limits():
    import pytest

    from bench.spec import SpecError

    with pytest.raises(SpecError, match="d: 64 is more than the 50 dimensions"):
        SweepSpec(d=(16, 64), patterns=("glove",))
    with pytest.raises(SpecError, match="n <= 50000"):
        SweepSpec(d=(16,), n=(4, 2**16), patterns=("glove",))
    with pytest.raises(SpecError, match="unknown distribution 'word2vec'"):
        SweepSpec(patterns=("word2vec",))


@pytest.mark.slow
def test_attention_grid_skips_topk_above_n_records_overflow_and_compiles_once_per_family(tmp_path):
    spec = SweepSpec(kernels=("attention",), d=(16,), n=(2, 8, 64), seeds=2, similarity=("dot",),
                     separation=("topk", "polynomial", "softmax"), topk=(4,), degree=(3.0, 40.0), beta=(1.0, 4.0))
    df, manifest = _run(spec, tmp_path)
    assert len(df) == (2 + 2 + 2) * 3 * 2  # (topk x beta, polynomial x degree, softmax x beta) x n x seeds
    skipped = df[df["status"] == "skipped"]
    assert set(skipped["n"]) == {2} and (skipped["separation"] == "topk").all()
    assert skipped["error"].str.contains("topk = 4 is more than n = 2").all()
    # s^40 overflows float32 for scores above ~9; weighed relative to the running maximum it is
    # a result (once a nan row), and with exact queries at least as sharp as degree 3.
    sharp = df[(df["separation"] == "polynomial") & (df["degree"] == 40.0)].set_index(["n", "seed"])["acc"]
    mild = df[(df["separation"] == "polynomial") & (df["degree"] == 3.0)].set_index(["n", "seed"])["acc"]
    assert (sharp >= mild).all() and sharp.loc[64].mean() > mild.loc[64].mean()
    assert (df[df["status"] != "skipped"]["status"] == "ok").all()
    poly, soft = df[df["separation"] == "polynomial"], df[df["separation"] == "softmax"]
    assert poly["beta"].isna().all() and poly["topk"].isna().all() and set(poly["degree"]) == {3.0, 40.0}
    assert soft["degree"].isna().all() and set(soft["beta"]) == {1.0, 4.0}
    assert set(df["method"].dropna()) == {"online", "running-top-k"}
    assert (df.loc[df["status"] == "ok", "acc_queries"] == df.loc[df["status"] == "ok", "n"]).all()
    # One family per (similarity, separation, k, heads, steps, d): beta, degree and n are traced.
    assert manifest["compiled_programs"] == 3


@pytest.mark.slow
def test_attention_rows_carry_theory_where_it_holds(tmp_path):
    spec = SweepSpec(kernels=("attention",), d=(32,), n=(4, 2048), seeds=1, similarity=("scaled_dot", "dot"),
                     separation=("softmax", "identity"), patterns=("gaussian",))
    df, _ = _run(spec, tmp_path)
    theory = df.set_index(["similarity", "separation", "n"])["theory_cos"]
    assert math.isnan(theory[("scaled_dot", "softmax", 4)])  # too few keys for the mean field
    assert abs(theory[("scaled_dot", "softmax", 2048)] - df.set_index(["similarity", "separation", "n"]).loc[
        ("scaled_dot", "softmax", 2048), "cos_mean"]) < 0.03
    assert theory[("dot", "identity", 2048)] == 1 / math.sqrt(1 + 2047 / 32)  # the Hebbian memory


def test_theory_that_overflows_is_null_and_the_cell_is_still_measured(tmp_path):
    """Extreme but valid settings overflow the closed forms (cosh(200)^32, 1e200^2, 1/(1e300...)):
    the theory value is null and the sweep records the cell, so a resume never meets a crash."""
    from bench.spec import Cell

    extreme = [Cell("attention", 32, 64, 32, 0.0, "binary", "float32", similarity="dot", separation="softmax",
                    beta=200.0, heads=1, steps=1, mask=0.0),
               Cell("pinv", 8, 64, 8, 1e200, "gaussian", "float32", mask=0.0),
               Cell("hebbian", 8, 64, 8, 1e200, "gaussian", "float32", mask=0.0),
               Cell("ridge", 8, 64, 8, 0.0, "gaussian", "float32", lam=1e300, mask=0.0)]
    for cell in extreme:
        row = sweep._base_row(cell, "run", "id")
        assert row["theory_cos"] is None or math.isfinite(row["theory_cos"]), cell
    df, _ = _run(SweepSpec(kernels=("pinv", "hebbian"), d=(8,), n=(4, 64), noise=(1e200,), seeds=1), tmp_path)
    assert len(df) == 4 and set(df["status"]) <= {"ok", "nan"}


def test_a_run_written_before_ids_hashed_every_setting_still_resumes(tmp_path):
    """Old run directories (manifest without cell_ids) name parts by Cell.legacy_id: a resume
    finds them there and recomputes nothing."""
    spec = SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 16), seeds=1)
    first, manifest = _run(spec, tmp_path)
    run_dir = tmp_path / first["run_id"][0]
    for cell in spec.cells(auto_method="gram64"):
        (run_dir / "parts" / f"{cell.id}.parquet").rename(run_dir / "parts" / f"{cell.legacy_id}.parquet")
    old = store.read_manifest(run_dir)
    del old["cell_ids"]
    store.write_manifest(run_dir, old)
    again = sweep_into(spec, run_dir, old)
    assert again["cell_ids"] == 1 and again["compiled_programs"] == 0
    assert again["cell_order"] == [c.legacy_id for c in spec.cells(auto_method="gram64")]


def test_the_glove_table_is_loaded_once_per_mesh():
    """Every GloVe cell of a run reads the same device table (80 MB), not a fresh load per cell."""
    mesh = Mesh(np.array(jax.devices()), ("seeds",))
    first = sweep.glove_table(mesh)
    assert sweep.glove_table(mesh) is first and first.shape == (spec_module.GLOVE_WORDS, spec_module.GLOVE_DIM)


def test_a_family_and_its_baseline_program_compile_side_by_side(tmp_path, monkeypatch):
    """The first cell waits for its family's program and its stream's baseline program: they
    compile at once (sweep.COMPILE_THREADS), not one after the other."""
    intervals: dict[str, tuple[float, float]] = {}

    def timed(name, real):
        def compile_(self, *args):
            start = time.perf_counter()
            out = real(self, *args)
            intervals.setdefault(name, (start, time.perf_counter()))
            return out
        return compile_

    monkeypatch.setattr(sweep._Programs, "_compile", timed("family", sweep._Programs._compile))
    monkeypatch.setattr(sweep._Programs, "_compile_baseline", timed("baseline", sweep._Programs._compile_baseline))
    df, _ = _run(SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 8), seeds=1), tmp_path)
    assert (df["status"] == "ok").all()
    (f0, f1), (b0, b1) = intervals["family"], intervals["baseline"]
    assert b0 < f1 and f0 < b1, f"family {f0:.3f}-{f1:.3f} s, baseline {b0:.3f}-{b1:.3f} s: one after the other"


def test_the_next_cell_runs_while_a_part_is_written(tmp_path, monkeypatch):
    """Parts are written on a thread of their own (store.PartWriter): the first cell's write
    waits until the second cell has started, which a write in the sweep's thread never sees."""
    second_started, real_measure, real_write = threading.Event(), sweep._measure, store.write_part
    measured = []

    def measure(cell, *args, **kwargs):
        measured.append(cell.n)
        if len(measured) == 2:
            second_started.set()
        return real_measure(cell, *args, **kwargs)

    def write(run_dir, cell_id, rows):
        assert second_started.wait(20), "the sweep waited for the part to be written"
        real_write(run_dir, cell_id, rows)

    monkeypatch.setattr(sweep, "_measure", measure)
    monkeypatch.setattr(store, "write_part", write)
    df, _ = _run(SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 8), seeds=1), tmp_path)
    assert (df["status"] == "ok").all() and list(df["n"]) == [4, 8] and measured == [4, 8]


def test_families_sharing_a_buffer_run_together_and_change_no_number(tmp_path, monkeypatch):
    """Cells run family by family, families of one cache-buffer shape one after another
    (sweep.running_order), so the buffer is allocated once per shape, not at every change of
    family in the spec's order; rows are stored in the spec's order, and sharing a buffer
    changes no number (each kernel alone gives the same rows)."""
    allocated, real_new_cache = [], streams.new_cache

    def new_cache(family, seeds):
        allocated.append((family.d, type(family).__name__))
        return real_new_cache(family, seeds)

    monkeypatch.setattr(streams, "new_cache", new_cache)
    spec = SweepSpec(kernels=("pinv", "hebbian", "ridge", "attention"), d=(8, 16), n=(4, 8), seeds=1)
    run_dir = store.new_run_dir(tmp_path / "mixed")
    manifest = sweep_into(spec, run_dir)
    store.merge(run_dir, manifest, manifest["cell_order"])
    mixed = store.load_results(run_dir)
    # One buffer per shape (matrix and attention caches differ in length); the spec's order
    # would have allocated one per change of family: 8.
    assert allocated == [(8, "MatrixFamily"), (16, "MatrixFamily"), (8, "AttentionFamily"), (16, "AttentionFamily")]
    assert list(dict.fromkeys(mixed["cell_id"])) == manifest["cell_order"]
    assert list(dict.fromkeys(mixed["kernel"])) == ["pinv", "hebbian", "ridge", "attention"]
    assert (mixed["status"] == "ok").all()
    columns = ["kernel", "d", "n", "seed", "cos_mean", "cos_std", "dist_mean", "acc", "baseline_cos", "baseline_dist"]
    for kernel in spec.kernels:
        alone, _ = _run(SweepSpec(kernels=(kernel,), d=(8, 16), n=(4, 8), seeds=1), tmp_path / kernel)
        both = mixed[mixed.kernel == kernel].sort_values(["d", "n", "seed"]).reset_index(drop=True)
        assert both[columns].equals(alone[columns]), kernel


def test_running_order_groups_families_and_buffers_in_order_of_first_appearance():
    spec = SweepSpec(kernels=("pinv", "hebbian", "ridge"), d=(8, 16), n=(4, 8), seeds=1)
    cells = spec.cells(auto_method="gram64")
    order = sweep.running_order(cells, lambda c: sweep.family_of(c, keep=8))
    assert sorted(order, key=cells.index) == cells  # every cell once
    assert [(c.kernel, c.d, c.n) for c in order] == [
        ("pinv", 8, 4), ("pinv", 8, 8), ("ridge", 8, 4), ("ridge", 8, 8), ("hebbian", 8, 4), ("hebbian", 8, 8),
        ("pinv", 16, 4), ("pinv", 16, 8), ("ridge", 16, 4), ("ridge", 16, 8), ("hebbian", 16, 4), ("hebbian", 16, 8)]


def test_the_quick_way_is_chosen_by_the_family_s_cells_together(tmp_path, monkeypatch):
    """A family whose cells are each small but together need FAST_COMPILE_FLOPS or more per
    device compiles the default way: the quick emitters' slower loops cost time in every cell
    (a choice by its largest cell compiled the default run's big families the quick way and
    ran them ~10% slower)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the quick emitters are an XLA:CPU option")
    spec = SweepSpec(kernels=("hebbian",), d=(16,), n=(8, 64, 512), seeds=2)
    per_device = -(-spec.seeds // len(jax.devices()))
    flops = [sweep.cell_flops(c) * per_device for c in spec.cells(auto_method="gram64-cholesky")]
    assert max(flops) < sum(flops)
    monkeypatch.setattr(sweep, "FAST_COMPILE_FLOPS", (max(flops) + sum(flops)) / 2)
    _, manifest = _run(spec, tmp_path / "together")
    assert manifest["compiled_programs"] == 1 and manifest["fast_compile_programs"] == 0
    monkeypatch.setattr(sweep, "FAST_COMPILE_FLOPS", sum(flops) * 1.01)
    _, manifest = _run(spec, tmp_path / "under")
    assert manifest["compiled_programs"] == 1 and manifest["fast_compile_programs"] == 1


def test_small_families_compile_the_quick_way_and_measure_the_same(tmp_path, monkeypatch):
    """On CPU, a family of small cells is compiled with XLA's quicker-compiling fusion emitters
    (sweep.compiler_options); large ones and other backends are compiled as they come. The
    choice changes no number beyond float rounding, and an XLA without the option still runs."""
    if jax.default_backend() == "cpu":
        assert sweep.compiler_options(1e9) == {"xla_cpu_use_fusion_emitters": False}
    else:
        assert sweep.compiler_options(1e9) == {}
    assert sweep.compiler_options(10 * sweep.FAST_COMPILE_FLOPS) == {}
    spec = SweepSpec(kernels=("pinv", "attention"), d=(16,), n=(8, 64), seeds=2, noise=(0.1,))
    quick, quick_manifest = _run(spec, tmp_path / "quick")
    monkeypatch.setattr(sweep, "FAST_COMPILE_FLOPS", 0.0)
    plain, plain_manifest = _run(spec, tmp_path / "plain")
    monkeypatch.setattr(sweep, "compiler_options", lambda flops: {"xla_no_such_option": True})
    unknown, unknown_manifest = _run(spec, tmp_path / "unknown")
    assert plain_manifest["fast_compile_programs"] == unknown_manifest["fast_compile_programs"] == 0
    on_cpu = jax.default_backend() == "cpu"
    assert quick_manifest["fast_compile_programs"] == (quick_manifest["compiled_programs"] if on_cpu else 0)
    assert quick_manifest["compiled_programs"] > 0
    for other in (plain, unknown):
        assert (other["status"] == "ok").all() and (quick["status"] == "ok").all()
        for column in ("cos_mean", "dist_mean", "acc", "baseline_cos"):
            np.testing.assert_allclose(quick[column], other[column], rtol=1e-6, atol=1e-7)


def test_scaled_dot_cells_share_the_dot_program_and_match_their_own(tmp_path):
    """A scaled_dot cell runs in the dot family at beta / sqrt(head dim) (softmax, top-k) or as
    it is (max, polynomial: scale-free weights); identity weights are the scores themselves, so
    its scaled_dot cells keep their own program. Every row matches the cell run in a program
    of its own similarity."""
    separations = ("softmax", "topk", "max", "polynomial", "identity")
    spec = SweepSpec(kernels=("attention",), d=(16,), n=(8, 64), seeds=2, similarity=("dot", "scaled_dot"),
                     separation=separations, topk=(4,), beta=(3.0,), heads=(1, 2), noise=(0.2,))
    df, manifest = _run(spec, tmp_path)
    assert (df["status"] == "ok").all()
    # (5 separations x 2 head counts) dot families, and the 2 scaled_dot identity families
    assert manifest["compiled_programs"] == 5 * 2 + 2
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    for (separation, heads), rows in df[df["similarity"] == "scaled_dot"].groupby(["separation", "heads"]):
        family = kernels.AttentionFamily("scaled_dot", separation, 16, 16, "gaussian", queries=1024,
                                         k=4 if separation == "topk" else 1, heads=int(heads), noisy=True,
                                         chunk=kernels.default_chunk(16, 16))
        for n, cell_rows in rows.groupby("n"):
            own = kernels.run_attention_cell(family, seeds, *kernels.attention_args(family, int(n), 0.2, 3.0))
            for column in ("cos_mean", "dist_mean", "acc"):
                np.testing.assert_allclose(cell_rows.sort_values("seed")[column], np.asarray(getattr(own, column)),
                                           rtol=1e-5, atol=1e-6, err_msg=f"{separation} heads={heads} n={n}")


def test_ridge_cells_share_the_pinv_program_and_match_their_own(tmp_path):
    """A ridge cell runs in the pinv family (pinv at lam with min_norm False is ridge): one
    compiled program per d for both, and every row matches the cell run in a ridge program."""
    spec = SweepSpec(kernels=("pinv", "ridge"), d=(16,), n=(8, 16, 64), seeds=2, lam=(0.5, 3.0), noise=(0.1,))
    df, manifest = _run(spec, tmp_path)
    assert (df["status"] == "ok").all() and manifest["compiled_programs"] == 1
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    for kernel, lam in (("pinv", 0.0), ("ridge", 0.5), ("ridge", 3.0)):
        family = kernels.MatrixFamily(kernel, 16, 16, "gaussian", noisy=True, chunk=kernels.default_chunk(16, 16))
        rows = df[(df["kernel"] == kernel) & ((df["lam"] == lam) if kernel == "ridge" else df["lam"].isna())]
        for n, cell_rows in rows.groupby("n"):
            own = kernels.run_matrix_cell(family, seeds, *kernels.matrix_args(family, int(n), 0.1, lam))
            for column in ("cos_mean", "dist_mean", "acc"):
                np.testing.assert_allclose(cell_rows.sort_values("seed")[column], np.asarray(getattr(own, column)),
                                           rtol=1e-9, atol=1e-12, err_msg=f"{kernel} lam={lam} n={n}")
            expected = "gram64-dual-cholesky" if kernel == "pinv" and n < 16 else "gram64-cholesky"
            assert (cell_rows["method"] == expected).all()
