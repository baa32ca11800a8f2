"""The streamed sweep cell: metrics against float64 NumPy on the very same pairs, theory
curves, bounded memory, and one compiled program for every n."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from bench import theory
from kernels import streams
from tests.conftest import TOLERANCE, materialize, materialize_mask, reference_metrics, reference_write


def _cell(rule, d, n, noise=0.0, seeds=2, dist="gaussian", dtype="float32", lam=1.0, eta=1.0, passes=1, chunk=None,
          queries=1024, method="gram64"):
    shape = kernels.MatrixFamily(rule, d, d, dist, dtype=dtype, chunk=chunk or kernels.default_chunk(d, d), queries=queries,
                              method=method, noisy=noise > 0)
    out = kernels.run_matrix_cell(shape, jax.numpy.arange(seeds, dtype=jax.numpy.int32),
                           *kernels.matrix_args(shape, n, noise, lam, eta, passes))
    return shape, {k: np.asarray(v) for k, v in out._asdict().items()}


CASES = [  # (rule, d, n, noise): n < d, n = d (worst conditioned), n > d, n = 1, several chunks
    ("pinv", 64, 32, 0.0), ("pinv", 64, 64, 0.0), ("pinv", 128, 128, 0.0), ("pinv", 32, 1000, 0.0),
    ("pinv", 16, 1, 0.0), ("pinv", 64, 64, 0.1), ("pinv", 64, 300, 0.2),
    # the dual solve at d / SMALL_DUAL rows (n <= 16 here) and at d rows just above it
    ("pinv", 128, 16, 0.1), ("pinv", 128, 17, 0.1), ("pinv", 256, 3, 0.0),
    ("hebbian", 32, 100, 0.0), ("hebbian", 32, 100, 0.3),
    ("ridge", 64, 64, 0.0), ("ridge", 32, 500, 0.1),
    ("delta", 32, 20, 0.0), ("delta", 16, 70, 0.1),
]


@pytest.mark.parametrize("rule,d,n,noise", CASES)
def test_cell_metrics_match_float64_numpy_on_the_same_pairs(rule, d, n, noise):
    shape, got = _cell(rule, d, n, noise, chunk=64, queries=50)
    tol = TOLERANCE["float32"]
    for s in range(2):
        K, V, E = materialize(s, n, shape)
        W = reference_write(rule, K, V, lam=1.0, eta=1.0, passes=1)
        ref = reference_metrics(K, V, E, W, noise * kernels.entry_scale("gaussian", d), sample=50)
        base = theory.baseline_dist(d)
        assert abs(got["cos_mean"][s] - ref["cos_mean"]) <= tol["cos"], (got["cos_mean"][s], ref["cos_mean"])
        assert abs(got["cos_std"][s] - ref["cos_std"]) <= 10 * tol["cos"]
        if ref["dist_mean"] > 0.01 * base:
            assert abs(got["dist_mean"][s] - ref["dist_mean"]) <= tol["dist_rel"] * ref["dist_mean"]
        else:
            assert abs(got["dist_mean"][s] - ref["dist_mean"]) <= tol["dist_base"] * base
        assert got["acc"][s] == pytest.approx(ref["acc"], abs=1.5 / 50)
        assert got["acc_queries"][s] == min(n, 50)
        assert got["solved"][s]


@pytest.mark.parametrize("rule,n,mask", [("pinv", 20, 0.25), ("hebbian", 100, 0.5), ("ridge", 300, 0.1)])
def test_masked_queries_match_numpy(rule, n, mask):
    d = 32
    shape = kernels.MatrixFamily(rule, d, d, "gaussian", chunk=64, queries=50, noisy=True, masked=True)
    out = kernels.run_matrix_cell(shape, jax.numpy.arange(2, dtype=jax.numpy.int32),
                           *kernels.matrix_args(shape, n, 0.1, 1.0, mask=mask))
    for s in range(2):
        K, V, E = materialize(s, n, shape)
        M = materialize_mask(s, n, shape, mask)
        np.testing.assert_array_equal((M == 0).sum(axis=1), round(mask * d))
        ref = reference_metrics(K, V, E, reference_write(rule, K, V), 0.1, sample=50, mask=M)
        assert abs(float(out.cos_mean[s]) - ref["cos_mean"]) <= TOLERANCE["float32"]["cos"]
        assert float(out.acc[s]) == pytest.approx(ref["acc"], abs=1.5 / 50)
    unmasked = _cell(rule, d, n, 0.1, chunk=64, queries=50)[1]
    assert float(out.cos_mean.mean()) < unmasked["cos_mean"].mean()  # zeroing coordinates costs recall


@pytest.mark.parametrize("method", ["gram64", "qr32"])
def test_method_is_recorded(method):
    _, got = _cell("pinv", 32, 16, method=method)
    names = {kernels.METHOD_NAMES[int(m)] for m in got["method"]}
    assert names == ({"gram64-dual-cholesky"} if method == "gram64" else {"qr32"})
    _, got = _cell("pinv", 32, 64, method=method)
    assert {kernels.METHOD_NAMES[int(m)] for m in got["method"]} == ({"gram64-cholesky"} if method == "gram64" else {"qr32"})


@pytest.mark.parametrize("d,n", [(2, 2), (2, 5), pytest.param(4, 3, marks=pytest.mark.slow)])
def test_rank_deficient_binary_keys_need_and_get_the_fallback(d, n):
    # Random +-1 keys in 2 or 4 dimensions repeat (up to sign) often: K is rank deficient
    # (for d = 2, n = 5: in 1 seed of 16), so 64 seeds hold some.
    SEEDS = 64
    shape = kernels.MatrixFamily("pinv", d, d, "binary", chunk=64, queries=64)
    seeds = jax.numpy.arange(SEEDS, dtype=jax.numpy.int32)
    args = kernels.matrix_args(shape, n, 0.0)
    plain = kernels.run_matrix_cell(shape, seeds, *args)
    # The solve reports failure exactly for the seeds whose keys are rank deficient, and some are.
    full_rank = np.array([np.linalg.matrix_rank(materialize(s, n, shape)[0]) == min(n, d) for s in range(SEEDS)])
    assert not full_rank.all()
    np.testing.assert_array_equal(np.asarray(plain.solved), full_rank)
    fixed = kernels.run_matrix_cell(shape._replace(fallback=True), seeds, *args)
    assert np.all(np.asarray(fixed.solved)) and np.all(np.isfinite(np.asarray(fixed.cos_mean)))
    for s in range(SEEDS):
        K, V, E = materialize(s, n, shape)
        ref = reference_metrics(K, V, E, np.linalg.pinv(K) @ V, 0.0, 64)
        assert abs(float(fixed.cos_mean[s]) - ref["cos_mean"]) < 1e-4
        assert abs(float(fixed.dist_mean[s]) - ref["dist_mean"]) < 1e-4


@pytest.mark.parametrize("rule,d,n", [("pinv", 64, 128), ("pinv", 64, 512), ("pinv", 128, 1024),
                                      ("hebbian", 64, 128), ("hebbian", 64, 1024), ("hebbian", 128, 512),
                                      ("ridge", 64, 256)])
def test_measured_curves_follow_theory(rule, d, n):
    _, got = _cell(rule, d, n, seeds=3, queries=16, lam=10.0)
    expected = theory.theory_cos(rule, d, n, 0.0, lam=10.0)
    assert abs(got["cos_mean"].mean() - expected) < 0.01, (got["cos_mean"].mean(), expected)


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_noisy_pinv_follows_theory_away_from_n_equals_d(noise):
    for n in (16, 256):
        _, got = _cell("pinv", 64, n, noise, seeds=3, queries=16)
        assert abs(got["cos_mean"].mean() - theory.theory_cos("pinv", 64, n, noise)) < 0.02


def test_pinv_noise_peak_at_n_equals_d_is_visible():
    dist = {n: _cell("pinv", 64, n, 0.1, seeds=3, queries=16)[1]["dist_mean"].mean() for n in (32, 64, 128)}
    assert dist[64] > 2 * dist[32] and dist[64] > 1.2 * dist[128], dist


def test_baselines_match_their_analytic_values():
    for dist in ("gaussian", "sphere", "binary"):
        _, got = _cell("hebbian", 64, 8, dist=dist, queries=8)
        assert abs(got["baseline_cos"].mean()) < 0.02
        assert got["baseline_dist"].mean() == pytest.approx(theory.baseline_dist(64, dist), rel=0.01)


@pytest.mark.parametrize("patterns", ["gaussian", "binary"])
def test_a_family_without_baselines_leaves_them_nan_and_the_baseline_program_gives_them(patterns):
    seeds = jnp.arange(3, dtype=jnp.int32)
    with_them = kernels.MatrixFamily("pinv", 24, 16, patterns, chunk=64, queries=32)
    without = with_them._replace(baseline=False)
    args = kernels.matrix_args(with_them, 100, 0.1)
    a, b = kernels.run_matrix_cell(with_them, seeds, *args), kernels.run_matrix_cell(without, seeds, *args)
    assert np.isnan(np.asarray(b.baseline_cos)).all() and np.isnan(np.asarray(b.baseline_dist)).all()
    for field in ("cos_mean", "cos_std", "dist_mean", "acc", "acc_queries", "method", "solved"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), err_msg=field)
    program = jax.jit(kernels.baseline_program(d=24, dv=16, patterns=patterns, chunk=64))
    cos, dist = program(seeds)
    np.testing.assert_array_equal(np.asarray(cos), np.asarray(a.baseline_cos))
    np.testing.assert_array_equal(np.asarray(dist), np.asarray(a.baseline_dist))
    assert len(set(np.asarray(cos).tolist())) == 3  # one value per seed, not one broadcast


def test_one_compiled_program_serves_every_n_noise_and_knob():
    shape = kernels.MatrixFamily("ridge", 32, 32, "gaussian", chunk=64, queries=32, noisy=True)
    traces = []

    def counted(*args):
        traces.append(1)
        return kernels.run_matrix_cell(shape, *args)

    fn = jax.jit(counted)
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    for n, noise, lam in [(4, 0.0, 1.0), (100, 0.0, 1.0), (1000, 0.2, 3.0)]:
        jax.block_until_ready(fn(seeds, *kernels.matrix_args(shape, n, noise, lam)))
    assert len(traces) == 1


def test_memory_is_bounded_independently_of_n():
    # The compiled program of the d = 1024 family is the one that runs n = 2^20: its temporaries
    # are what the cell needs, whatever n is.
    shape = kernels.MatrixFamily("pinv", 1024, 1024, "gaussian", chunk=kernels.default_chunk(1024, 1024))
    seeds = jax.numpy.arange(1, dtype=jax.numpy.int32)
    compiled = jax.jit(partial(kernels.run_matrix_cell, shape)).lower(seeds, *kernels.matrix_args(shape, 4, 0.0)).compile()
    stats = compiled.memory_analysis()
    total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    assert total < 0.5 * 2**30, total / 2**30


def test_same_seed_same_numbers_and_nested_n():
    # Pairs do not depend on n: the first 10 pairs of n = 10 and n = 300 are the same.
    shape = kernels.MatrixFamily("pinv", 8, 8, "gaussian", chunk=64)
    K10, _, _ = materialize(0, 10, shape)
    K300, _, _ = materialize(0, 300, shape)
    np.testing.assert_array_equal(K10, K300[:10])
    _, a = _cell("pinv", 8, 30)
    _, b = _cell("pinv", 8, 30)
    np.testing.assert_array_equal(a["cos_mean"], b["cos_mean"])


def test_float64_cells_match_numpy_tightly():
    shape, got = _cell("pinv", 32, 32, dtype="float64", chunk=64, queries=32)
    K, V, E = materialize(0, 32, shape)
    ref = reference_metrics(K, V, E, np.linalg.lstsq(K, V, rcond=None)[0], 0.0, 32)
    assert abs(got["cos_mean"][0] - ref["cos_mean"]) < 1e-10


def test_flops_count_the_big_terms():
    assert kernels.matrix_flops("pinv", 2048, 1024, 1024, 1024) >= 4 * 2 * 2048 * 1024 * 1024
    assert kernels.matrix_flops("hebbian", 100, 10, 10, 50) < kernels.matrix_flops("pinv", 100, 10, 10, 50)


def test_table_patterns_match_numpy_on_the_same_rows():
    # Pairs drawn from a table of real vectors: distinct rows, the metrics as NumPy computes them.
    table = np.random.default_rng(7).standard_normal((300, 12)).astype(np.float32) + 0.3
    shape = kernels.MatrixFamily("pinv", 8, 8, kernels.TABLE, chunk=64, queries=40)
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    got = kernels.run_matrix_cell(shape, seeds, *kernels.matrix_args(shape, 100, 0.0), jax.numpy.asarray(table))
    for s in range(2):
        K, V, _ = materialize(s, 100, shape, table=jax.numpy.asarray(table))
        assert len({tuple(r) for r in np.round(np.concatenate([K, V]), 5)}) == 200  # 200 distinct rows
        ref = reference_metrics(K, V, np.zeros_like(K), np.linalg.lstsq(K, V, rcond=None)[0], 0.0, 40)
        assert abs(float(got.cos_mean[s]) - ref["cos_mean"]) < 1e-4
        assert abs(float(got.acc[s]) - ref["acc"]) <= 1 / 40
    with pytest.raises(ValueError, match="table"):
        kernels.run_matrix_cell(shape, seeds, *kernels.matrix_args(shape, 100, 0.0))


@pytest.mark.parametrize("rule,n", [("pinv", 700), pytest.param("ridge", 300, marks=pytest.mark.slow),
                                    pytest.param("delta", 200, marks=pytest.mark.slow)])
def test_the_cache_changes_no_number(rule, n):
    """Pairs kept by the write and read by the score pass equal the pairs drawn again: the same
    metrics (to float64 rounding of the reductions, which two programs may order differently), whether the cache holds only the sample's chunks or all of them (the
    delta rule's second pass reads them too)."""
    seeds = jax.numpy.arange(2, dtype=jax.numpy.int32)
    results = []
    for keep in (0, 1024):
        family = kernels.MatrixFamily(rule, 16, 16, "gaussian", chunk=64, queries=64, noisy=True, masked=True, keep=keep)
        program = jax.jit(kernels.matrix_cell_program(family), donate_argnums=1)
        out, cache = program(seeds, streams.new_cache(family, 2), *kernels.matrix_args(family, n, 0.1, 1.0, 1.0, 2, 0.25))
        assert cache.shape == (2, family.kept_chunks + 1, 64, 32)  # handed back for the next cell
        results.append({k: np.asarray(v) for k, v in out._asdict().items()})
    for other in results[1:]:
        for k in results[0]:
            np.testing.assert_allclose(results[0][k], other[k], rtol=1e-12, atol=1e-15, err_msg=k)
    # A cell storing more pairs than its family keeps was never given them: NaN, never a wrong number.
    small = kernels.MatrixFamily(rule, 16, 16, "gaussian", chunk=64, queries=64, keep=128)
    assert np.isnan(np.asarray(kernels.run_matrix_cell(small, seeds, *kernels.matrix_args(small, n, 0.0)).cos_mean)).all()




@pytest.mark.parametrize("flags", [[], ["--with-baselines"]])
def test_profile_cell_times_every_n_of_one_family(flags, capsys):
    from bench import profile_cell

    assert profile_cell.main(["hebbian", "16", "4,64", "--chunk", "64", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("hebbian d=16 chunk=64 keep=64: trace+lower")
    assert [line.split(":")[0] for line in lines[1:]] == ["n=4", "n=64", "all 2 cells"]


@pytest.mark.parametrize("scale", [1.0, 1e36, 1e-30])  # ordinary; squares beyond float32's range, above, below
def test_float32_rows_are_scored_in_float64_without_scaling_as_exactly_as_float64_rows(scale):
    """metrics.row_cos_dist sums float32 rows' squares in float64 as they are (they cannot
    overflow or underflow there), without the scaling passes float64 rows need: the same
    cosines and distances as NumPy in float64 and as float64 rows, at any float32 magnitude;
    a zero row has cosine 0."""
    from kernels import metrics

    rng = np.random.default_rng(3)
    R = (rng.standard_normal((64, 96)) * scale).astype(np.float32)
    V = (R + 0.1 * scale * rng.standard_normal((64, 96))).astype(np.float32)
    R[5] = 0.0
    assert np.all(np.isfinite(R)) and np.all(np.abs(R[R != 0]) > 0)
    R64, V64 = R.astype(np.float64), V.astype(np.float64)
    norms = np.linalg.norm(R64, axis=1) * np.linalg.norm(V64, axis=1)
    cos_ref = np.where(norms > 0, np.sum(R64 * V64, axis=1) / np.where(norms > 0, norms, 1), 0.0)
    dist_ref = np.linalg.norm(R64 - V64, axis=1)
    assert metrics._squares_fit(R.dtype, V.dtype, jnp.float64)
    for rows in (R, R64):  # float32 rows (the quick sums) and float64 rows (the scaled ones)
        cos, dist = (np.asarray(x) for x in metrics.row_cos_dist(jnp.asarray(rows), jnp.asarray(V), jnp.float64))
        np.testing.assert_allclose(cos, cos_ref, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(dist, dist_ref, rtol=1e-14)
        assert cos[5] == 0.0
