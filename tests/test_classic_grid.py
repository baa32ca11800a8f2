"""The acceptance bar on every cell of the classic grid (d = 2^6..2^10, n = 2^2..2^15, pinv,
float32, one seed): each reported metric agrees with float64 NumPy lstsq on the same pairs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import kernels
from bench import theory
from tests.conftest import TOLERANCE, materialize

D = tuple(2**i for i in range(6, 11))
N = tuple(2**i for i in range(2, 16))


def _reference(K, V, sample=1024):
    W = np.linalg.lstsq(K, V, rcond=None)[0]
    R = K @ W
    rn, vn = np.linalg.norm(R, axis=1), np.linalg.norm(V, axis=1)
    cos = np.sum(R * V, axis=1) / (rn * vn)
    m = min(len(K), sample)
    # Squared distances of the sampled recalls to every value, by the Gram identity.
    d2 = (R[:m] ** 2).sum(1)[:, None] + (V**2).sum(1)[None, :] - 2 * R[:m] @ V.T
    own = d2[np.arange(m), np.arange(m)].copy()
    d2[np.arange(m), np.arange(m)] = np.inf
    acc = float(np.mean(own < d2.min(axis=1))) if len(K) > 1 else 1.0
    return cos.mean(), np.linalg.norm(R - V, axis=1).mean(), acc


@pytest.mark.slow
@pytest.mark.parametrize("d", D)
def test_every_classic_cell_matches_float64_numpy(d):
    shape = kernels.MatrixFamily("pinv", d, d, "gaussian", chunk=kernels.default_chunk(d, d))
    fn = jax.jit(lambda n: kernels.run_matrix_cell(shape, jax.numpy.zeros(1, jax.numpy.int32), *kernels.matrix_args(shape, n, 0.0)))
    tol = TOLERANCE["float32"]
    base = theory.baseline_dist(d)
    K_all, V_all, _ = materialize(0, N[-1], shape)
    for n in N:
        got = fn(np.int32(n))
        cos, dist, acc = _reference(K_all[:n], V_all[:n])
        assert abs(float(got.cos_mean[0]) - cos) <= tol["cos"], (d, n, float(got.cos_mean[0]), cos)
        if dist > 0.01 * base:
            assert abs(float(got.dist_mean[0]) - dist) <= tol["dist_rel"] * dist, (d, n)
        else:
            assert abs(float(got.dist_mean[0]) - dist) <= tol["dist_base"] * base, (d, n, float(got.dist_mean[0]), dist)
        assert abs(float(got.acc[0]) - acc) <= 2 / min(n, 1024), (d, n, float(got.acc[0]), acc)
