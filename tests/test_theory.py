"""The analytic curves and baselines against independent NumPy Monte Carlo (not the code's own
formulas re-typed): a wrong constant or a wrong trace would be caught."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import theory


def _simulate(rule: str, d: int, n: int, noise: float = 0.0, lam: float = 1.0, trials: int = 4, seed: int = 0):
    """Mean cosine between Q W and V for Gaussian pairs, in float64 NumPy."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        K, V = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        if rule == "pinv":
            W = np.linalg.pinv(K) @ V
        elif rule == "hebbian":
            W = K.T @ V
        else:
            W = np.linalg.solve(K.T @ K + lam * np.eye(d), K.T @ V)
        R = (K + noise * rng.standard_normal((n, d))) @ W
        out.append(np.mean(np.sum(R * V, 1) / (np.linalg.norm(R, axis=1) * np.linalg.norm(V, axis=1))))
    return float(np.mean(out))


@pytest.mark.parametrize("rule,d,n,noise,lam", [
    ("pinv", 64, 256, 0.0, None), ("pinv", 64, 32, 0.0, None), ("pinv", 64, 256, 0.3, None),
    ("pinv", 64, 24, 0.3, None), ("hebbian", 64, 128, 0.0, None), ("hebbian", 64, 512, 0.5, None),
    ("ridge", 64, 128, 0.0, 10.0), ("ridge", 64, 64, 0.0, 30.0), ("ridge", 64, 256, 0.2, 5.0),
])
def test_matrix_curves_match_a_numpy_simulation(rule, d, n, noise, lam):
    expected = theory.theory_cos(rule, d, n, noise, lam=lam)
    assert abs(_simulate(rule, d, n, noise, lam=lam or 1.0) - expected) < 0.02, (rule, d, n, noise, expected)


def test_no_curve_where_none_is_known():
    assert math.isnan(theory.theory_cos("delta", 64, 128))
    assert math.isnan(theory.theory_cos("pinv", 64, 64, noise=0.1))  # the error peak itself
    assert math.isnan(theory.theory_cos("pinv", 64, 128, patterns="glove"))


@pytest.mark.parametrize("patterns", ["gaussian", "sphere", "binary"])
@pytest.mark.parametrize("dv", [1, 3, 64])
def test_baseline_distance_matches_a_numpy_simulation(patterns, dv):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 200_000, dv))
    if patterns == "sphere":
        x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y))
    elif patterns == "binary":
        x, y = np.sign(x), np.sign(y)
    assert theory.baseline_dist(dv, patterns) == pytest.approx(np.linalg.norm(x - y, axis=1).mean(), rel=5e-3)
    assert theory.baseline_cos(dv, patterns) == 0.0


def test_softmax_weight_matches_a_simulation_where_the_sum_concentrates():
    """Unit keys, dot scores: the weight on the right key, simulated, against the mean field."""
    rng = np.random.default_rng(2)
    d, n, beta = 16, 4096, 4.0
    weights = []
    for _ in range(20):
        K = rng.standard_normal((n, d))
        K /= np.linalg.norm(K, axis=1, keepdims=True)
        s = beta * (K @ K[0])
        w = np.exp(s - s.max())
        weights.append(w[0] / w.sum())
    assert theory.softmax_weight(d, n, beta, "dot", "sphere") == pytest.approx(np.mean(weights), rel=0.1)
