"""Every matrix memory against its float64 NumPy reference, on hypothesis-drawn shapes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kernels
from tests.conftest import reference_write

RULES = {
    "pinv": lambda K, V: kernels.pinv(K, V),
    "pinv-qr32": lambda K, V: kernels.pinv(K, V, method="qr32"),
    "hebbian": lambda K, V: kernels.hebbian(K, V),
    "ridge": lambda K, V: kernels.ridge(K, V, 0.5),
    "ridge-qr32": lambda K, V: kernels.ridge(K, V, 0.5, method="qr32"),
    "delta": lambda K, V: kernels.delta(K, V, 1.0, 2),
    "delta-scan": lambda K, V: kernels.delta(K, V, 1.0, 2, form="scan"),
}
REFERENCE = {"pinv": dict(), "hebbian": dict(), "ridge": dict(lam=0.5), "delta": dict(eta=1.0, passes=2)}

# Shapes the issue names explicitly, then hypothesis draws more.
CORNERS = [(1, 1, 1), (1, 7, 3), (7, 1, 2), (5, 5, 5), (5, 9, 4), (9, 5, 4), (16, 16, 16), (40, 12, 6),
           # n = d / SMALL_DUAL (the dual solve at 16 rows), one above it (at d rows), and n = 1
           (16, 128, 8), (17, 128, 8), (1, 128, 4)]


def _pairs(n, d, dv, dist, seed):
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((n, d))
    V = rng.standard_normal((n, dv))
    if dist == "binary":
        K = np.where(K >= 0, 1.0, -1.0)
    return K.astype(np.float32), V.astype(np.float32)


def _check(name, K, V):
    rule = name.split("-")[0]
    W = np.asarray(RULES[name](jnp.asarray(K), jnp.asarray(V)), np.float64)
    K64, V64 = K.astype(np.float64), V.astype(np.float64)
    W_ref = reference_write(rule, K64, V64, **REFERENCE[rule])
    R, R_ref = K64 @ W, K64 @ W_ref
    # Recall error bound: float32 rounding of W, amplified at most by cond(K) (1 for well-posed
    # rules); NumPy's own answer is good to ~1e-15.
    sv = np.linalg.svd(K64, compute_uv=False)
    rank = int(np.sum(sv > sv[0] * max(K.shape) * np.finfo(np.float64).eps))
    cond = sv[0] / sv[rank - 1] if rank else 1.0
    amplification = cond if rule in ("pinv", "delta") else 1.0
    scale = np.linalg.norm(V64) + np.linalg.norm(R_ref) + 1e-30
    tol = 64 * np.finfo(np.float32).eps * amplification * (1 + np.sqrt(K.shape[0]))
    if name.endswith("qr32"):
        tol *= 8
    assert np.linalg.norm(R - R_ref) <= tol * scale, (name, K.shape, np.linalg.norm(R - R_ref) / scale, tol)
    assert W.shape == (K.shape[1], V.shape[1])


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("n,d,dv", CORNERS)
def test_corner_shapes_match_numpy(name, n, d, dv):
    K, V = _pairs(n, d, dv, "gaussian", seed=n * 100 + d)
    _check(name, K, V)


@pytest.mark.parametrize("name", sorted(RULES))
@given(n=st.integers(1, 24), d=st.integers(1, 12), dv=st.integers(1, 4), dist=st.sampled_from(["gaussian", "binary"]),
       seed=st.integers(0, 2**16))
def test_hypothesis_shapes_match_numpy(name, n, d, dv, dist, seed):
    K, V = _pairs(n, d, dv, dist, seed)
    _check(name, K, V)


def test_pinv_rank_deficient_keys_give_the_minimum_norm_solution():
    # Duplicated +-1 keys: K^T K is exactly singular, Cholesky fails, the eigh fallback runs.
    K = np.array([[1, 1, -1], [1, 1, -1], [-1, 1, 1], [1, -1, 1], [-1, 1, 1]], np.float32)
    V = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    W = np.asarray(kernels.pinv(K, V), np.float64)
    np.testing.assert_allclose(W, np.linalg.pinv(K.astype(np.float64)) @ V, atol=1e-5)


def test_pinv_rank_deficient_keys_below_d_fall_back_from_the_dual_solve():
    # n < d with a repeated key: the dual Cholesky (of K K^T) fails, and the eigenvalue
    # fallback must still give the minimum-norm solution.
    rng = np.random.default_rng(1)
    K = np.where(rng.standard_normal((6, 16)) >= 0, 1.0, -1.0).astype(np.float32)
    K[3] = K[0]  # a duplicated key: K K^T is singular
    V = rng.standard_normal((6, 3)).astype(np.float32)
    W = np.asarray(kernels.pinv(K, V), np.float64)
    np.testing.assert_allclose(W, np.linalg.pinv(K.astype(np.float64)) @ V, atol=1e-5)


def test_pinv_is_exact_at_n_equals_d_where_conditioning_is_worst():
    # d = n = 256 Gaussian: cond(K) ~ 500; float32 normal equations would lose ~cond^2 eps.
    K, V = _pairs(256, 256, 256, "gaussian", seed=3)
    W = np.asarray(kernels.pinv(K, V), np.float64)
    R = K.astype(np.float64) @ W
    rel = np.linalg.norm(R - V, axis=1) / np.linalg.norm(V, axis=1)
    assert rel.mean() < 1e-4
    # The naive float32 normal equations really do fail here: the test can tell.
    G = K.T @ K
    W_naive = np.linalg.solve(G, K.T @ V)
    rel_naive = np.linalg.norm(K @ W_naive - V, axis=1) / np.linalg.norm(V, axis=1)
    assert rel_naive.mean() > 10 * rel.mean()


def test_well_conditioned_gram_sums_flush_float32_partials_into_float64_exactly_once():
    # Well-conditioned chunks are summed in float32 for PARTIAL_ROWS rows, then added to the
    # float64 sums. Over 3.4 flush periods, the total must be the float64 Gram (to float32's
    # rounding over PARTIAL_ROWS rows), and the partial must hold only the rows since the last
    # flush: a flush that forgot to reset would count those rows twice.
    import jax
    from kernels import matrix

    chunk, d, dv = 256, 8, 4
    per_flush = matrix.PARTIAL_ROWS // chunk
    n = int(3.4 * matrix.PARTIAL_ROWS)
    K, V = _pairs(n, d, dv, "gaussian", seed=11)
    w = matrix.Writer("pinv", d, dv, chunk, jnp.dtype(jnp.float32))
    pad = -n % chunk
    K, V = np.pad(K, ((0, pad), (0, 0))), np.pad(V, ((0, pad), (0, 0)))
    KV = jnp.asarray(np.concatenate([K, V], axis=1))
    source = lambda j, carry: (jax.lax.dynamic_slice_in_dim(KV, j * chunk, chunk), carry)
    sums, _ = jax.jit(lambda: matrix.fold(w, source, n, matrix.Params()))()
    assert not bool(matrix.is_precise("pinv", n, d))
    K64 = K.astype(np.float64)
    expected = K64.T @ np.concatenate([K64, V], axis=1)
    total = np.asarray(sums.total(), np.float64)
    assert np.abs(total - expected).max() <= 1e-5 * np.abs(expected).max()
    chunks = -(-n // chunk)
    since_flush = slice((chunks - chunks % per_flush) * chunk, None)
    partial = K64[since_flush].T @ np.concatenate([K64[since_flush], V[since_flush]], axis=1)
    np.testing.assert_allclose(np.asarray(sums.partial, np.float64), partial, rtol=1e-4, atol=1e-3)
    assert int(sums.count) == chunks


def test_delta_converges_to_pinv_when_keys_fit():
    # Normalised delta rule = Kaczmarz: from W = 0 it converges to the minimum-norm solution.
    K, V = _pairs(8, 32, 4, "gaussian", seed=1)
    W_delta = np.asarray(kernels.delta(K, V, 1.0, 200), np.float64)
    np.testing.assert_allclose(K @ W_delta, V, atol=1e-4)
    np.testing.assert_allclose(W_delta, np.linalg.pinv(K.astype(np.float64)) @ V, atol=1e-4)


def test_hebbian_is_exact_for_orthonormal_keys():
    Q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((16, 16)))
    V = np.random.default_rng(3).standard_normal((16, 5))
    W = np.asarray(kernels.hebbian(Q.astype(np.float32), V.astype(np.float32)))
    np.testing.assert_allclose(Q @ W, V, atol=1e-5)


def test_kernels_vmap_over_trials():
    import jax

    K = np.random.default_rng(4).standard_normal((3, 10, 6)).astype(np.float32)
    V = np.random.default_rng(5).standard_normal((3, 10, 2)).astype(np.float32)
    for fn in (kernels.pinv, kernels.hebbian, lambda k, v: kernels.ridge(k, v, 1.0), kernels.delta):
        batched = np.asarray(jax.vmap(fn)(K, V))
        single = np.stack([np.asarray(fn(K[i], V[i])) for i in range(3)])
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise_a_clear_error():
    with pytest.raises(ValueError, match="same n"):
        kernels.pinv(np.ones((4, 3), np.float32), np.ones((5, 2), np.float32))
