"""The streamed attention sweep cell: against a float64 NumPy reference on the same pairs,
against the Hebbian memory (linear attention is one), against the softmax theory, and its
corruptions (noise, mask), iteration and overflow handling."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from bench import theory
from kernels import streams
from tests.conftest import materialize, same_numbers
from tests.test_attention import _reference

SEEDS = jnp.arange(2, dtype=jnp.int32)


def _cell(shape, n, **knobs):
    out = kernels.run_attention_cell(shape, SEEDS, *kernels.attention_args(shape, n, **knobs))  # cached per family
    return {k: np.asarray(v) for k, v in out._asdict().items()}


def _shape(sim="dot", sep="softmax", d=16, dist="gaussian", **kw):
    return kernels.AttentionFamily(sim, sep, d, kw.pop("dv", d), dist, chunk=kw.pop("chunk", 64),
                                  queries=kw.pop("queries", 48), **kw)


@pytest.mark.parametrize("sim,sep", [("dot", "softmax"), ("scaled_dot", "topk"), ("cosine", "polynomial"),
                                     ("euclidean", "max"), ("manhattan", "softmax"), ("dot", "identity")])
@pytest.mark.parametrize("n", [5, 48, 150])
def test_cell_matches_numpy_reference_on_the_same_pairs(sim, sep, n):
    shape = _shape(sim, sep, k=3, heads=2, noisy=True)
    got = _cell(shape, n, noise=0.2, beta=2.0, degree=2.0)
    for i, seed in enumerate(np.asarray(SEEDS)):
        K, V, E = materialize(int(seed), n, shape)
        m = min(n, shape.queries)
        Q = K[:m] + 0.2 * E[:m]
        halves = [slice(0, 8), slice(8, 16)]  # two heads
        R = np.concatenate([_reference(Q[:, h], K[:, h], V[:, h], sim, sep, 2.0, min(3, n), power=2.0)
                            for h in halves], axis=1)
        rn, vn = np.linalg.norm(R, axis=1), np.linalg.norm(V[:m], axis=1)
        cos = np.sum(R * V[:m], axis=1) / np.where(rn * vn > 0, rn * vn, 1)
        d2 = ((R[:, None, :] - V[None, :, :]) ** 2).sum(-1)
        own = d2[np.arange(m), np.arange(m)].copy()
        d2[np.arange(m), np.arange(m)] = np.inf
        acc = np.mean(own < d2.min(axis=1))
        assert got["acc_queries"][i] == m
        np.testing.assert_allclose(got["cos_mean"][i], cos.mean(), atol=2e-4)
        np.testing.assert_allclose(got["cos_std"][i], cos.std(), atol=2e-4)
        np.testing.assert_allclose(got["dist_mean"][i], np.linalg.norm(R - V[:m], axis=1).mean(), rtol=2e-4)
        assert abs(got["acc"][i] - acc) <= 1.0 / m + 1e-12  # a near-tie may flip one query


@pytest.mark.parametrize("n", [3, 100, 700])
def test_linear_attention_is_the_hebbian_memory(n):
    """identity separation over dot scores: sum_j (q . k_j) v_j = q K^T V, on the same pairs."""
    d = 32
    chunk = kernels.default_chunk(d, d)
    att = _cell(kernels.AttentionFamily("dot", "identity", d, d, "gaussian", chunk=chunk, queries=1024), n)
    shape = kernels.MatrixFamily("hebbian", d, d, "gaussian", chunk=chunk)
    heb = kernels.run_matrix_cell(shape, SEEDS, *kernels.matrix_args(shape, n, 0.0))
    np.testing.assert_allclose(att["cos_mean"], np.asarray(heb.cos_mean), rtol=1e-5)
    np.testing.assert_allclose(att["acc"], np.asarray(heb.acc))
    np.testing.assert_allclose(att["baseline_cos"], np.asarray(heb.baseline_cos))


@pytest.mark.parametrize("sim,dist,d,beta,ns", [("dot", "sphere", 16, 4.0, (256, 1024, 4096)),
                                                 ("scaled_dot", "gaussian", 32, 1.0, (256, 1024, 4096)),
                                                 ("cosine", "gaussian", 32, 6.0, (1024, 4096))])
def test_softmax_recall_follows_the_mean_field_theory(sim, dist, d, beta, ns):
    """Where the sum over the other keys concentrates (n - 1 >= exp(4 beta^2 sigma^2))."""
    shape = kernels.AttentionFamily(sim, "softmax", d, d, dist, chunk=kernels.default_chunk(d, d), queries=1024)
    measured = [float(_cell(shape, n, beta=beta)["cos_mean"].mean()) for n in ns]
    predicted = [theory.softmax_cos(d, n, beta, sim, dist) for n in ns]
    assert all(np.isfinite(predicted))
    np.testing.assert_allclose(measured, predicted, atol=0.03)
    assert measured[0] > measured[-1] + 0.05  # the curve falls with n: the check is not vacuous


def test_theory_weight_formula_and_its_validity_limit():
    # The form for unit keys: p = 1 / (1 + (n-1) exp(beta^2 / (2d) - beta)).
    for d, n, beta in [(64, 1000, 8.0), (16, 50, 2.0)]:
        assert theory.softmax_weight(d, n, beta) == pytest.approx(1 / (1 + (n - 1) * np.exp(beta**2 / (2 * d) - beta)))
    assert np.isnan(theory.softmax_cos(64, 100, 1.0, "dot", "gaussian"))  # a few keys dominate: no mean field
    assert np.isnan(theory.softmax_cos(64, 100, 1.0, "euclidean", "gaussian"))


def test_max_with_euclidean_recalls_every_stored_value_exactly():
    got = _cell(_shape("euclidean", "max", queries=64), 2000)
    np.testing.assert_array_equal(got["acc"], 1.0)
    np.testing.assert_allclose(got["cos_mean"], 1.0, atol=1e-6)


def test_mask_zeroes_the_exact_fraction_of_coordinates():
    shape = _shape(masked=True)
    for fraction in (0.0, 0.25, 0.5, 0.9):
        mask = np.asarray(streams.query_mask(jax.random.key(0), 3, jnp.float32(fraction), chunk=shape.chunk,
                                             d=shape.d, dtype=jnp.float32))
        assert set(np.unique(mask)) <= {0.0, 1.0}
        np.testing.assert_array_equal((mask == 0).sum(axis=1), round(fraction * shape.d))
    # The zeroed coordinates differ between rows (not one fixed set).
    assert len({tuple(r) for r in mask}) > 1


@pytest.mark.slow
def test_masked_queries_recall_worse_and_iteration_cleans_them_up():
    """Auto-association (steps > 1: the values are the keys). Half the coordinates zeroed hurts
    the recall; more updates (modern Hopfield iteration) move back towards the stored key."""
    base = dict(sim="cosine", sep="softmax", d=64, dist="sphere", chunk=256, queries=256)
    clean = _cell(_shape(**base, steps=2), 2000, beta=8.0)
    two = _cell(_shape(**base, steps=2, masked=True), 2000, beta=8.0, mask=0.5)
    five = _cell(_shape(**base, steps=5, masked=True), 2000, beta=8.0, mask=0.5)
    assert clean["cos_mean"].mean() > two["cos_mean"].mean() + 0.01
    assert five["cos_mean"].mean() > two["cos_mean"].mean() + 0.01


def test_weights_that_would_overflow_give_their_limit_not_nan():
    """256^20 overflows float32 and beta = 1e6 times a score of ~256 overflows exp: computed
    relative to the running maximum, both are the hard maximum, which for exact queries is the
    query's own stored value."""
    for sep, knobs in (("polynomial", dict(degree=20.0)), ("softmax", dict(beta=1e6))):
        got = _cell(_shape("dot", sep, d=256, queries=16, chunk=64), 100, **knobs)
        np.testing.assert_allclose(got["cos_mean"], 1.0, atol=1e-6)
        assert (got["acc"] == 1.0).all() and np.isfinite(got["baseline_cos"]).all()


def test_one_program_serves_every_n_and_knob():
    shape = _shape(queries=32)
    fn = jax.jit(partial(kernels.run_attention_cell, shape))
    fn(SEEDS, *kernels.attention_args(shape, 10))
    with jax.log_compiles():
        before = fn._cache_size()
        for n, beta in [(3, 0.5), (500, 2.0), (77, 8.0)]:
            fn(SEEDS, *kernels.attention_args(shape, n, beta=beta))
        assert fn._cache_size() == before


@pytest.mark.parametrize("sep,k", [("topk", 3), ("max", 1)])
@pytest.mark.parametrize("dist,heads,steps,sim", [("gaussian", 1, 1, "dot"), ("sphere", 2, 1, "euclidean"),
                                                  ("binary", 1, 2, "scaled_dot"), ("sphere", 2, 2, "cosine")])
def test_kept_top_keys_carry_rows_and_give_the_same_numbers(sep, k, dist, heads, steps, sim):
    """Over kept pairs, top-k and max carry the best keys' rows and read their values from
    the cache at the end (kernels.attention.top_rows_update); over redrawn pairs they carry
    the values: the same numbers, per head and per step, n a whole number of chunks or not.
    Bit for bit except in the last case, where the two programs (kept or redrawn pairs) already
    rounded sphere keys' cosines 1 float32 ulp apart before rows were carried (7e-10 in
    cos_mean, 7e-9 in cos_std); a wrong row or column would be off by far more. Bit for bit
    on CPU only (conftest.same_numbers)."""
    exact = (dist, heads, steps, sim) != ("sphere", 2, 2, "cosine")
    tolerance = same_numbers() if exact else same_numbers(rtol=1e-6, atol=1e-8)
    for n in (5, 128, 300):
        got = [_cell(_shape(sim, sep, dist=dist, k=k, heads=heads, steps=steps, noisy=True, keep=keep), n,
                     noise=0.3, beta=3.0) for keep in (0, 512)]
        for key in got[0]:
            np.testing.assert_allclose(got[0][key], got[1][key], **tolerance, err_msg=f"{key}, n = {n}")


def test_the_cache_changes_no_number():
    """The first attention pass keeps the chunks it draws; the nearest-neighbour pass (and
    further steps) read them: the same numbers as drawing every pass."""
    got = [_cell(_shape("scaled_dot", "topk", k=3, noisy=True, keep=keep), 300, noise=0.1) for keep in (0, 512)]
    # A cell storing more pairs than its family keeps was never given them: NaN, never a wrong number.
    assert np.isnan(_cell(_shape("scaled_dot", "topk", k=3, noisy=True, keep=128), 300, noise=0.1)["cos_mean"]).all()
    for other in got[1:]:
        for k in got[0]:
            np.testing.assert_allclose(got[0][k], other[k], **same_numbers(rtol=1e-12, atol=1e-15), err_msg=k)
