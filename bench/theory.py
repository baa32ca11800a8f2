"""Analytic expectations: theory curves of recall quality and random baselines (NumPy only).

Notation: K (n, d) keys with i.i.d. isotropic rows, s^2 the variance of one key coordinate,
queries k + e with e ~ N(0, (noise * s)^2 I). A linear memory recalls R = Q W, and for the
least-squares family W = (K^T K + lam I)^+ K^T V. With S = K (K^T K + lam)^+ K^T (the "hat"
matrix), R_i = (S V)_i + e W, and concentration over i.i.d. values gives

    cos ~ (tr S / n) / sqrt(tr S^2 / n + noise^2 s^2 tr(K^T K (K^T K + lam)^-2)).

- pinv (lam -> 0): tr S = min(n, d) = tr S^2, and E tr (K^T K)^+ is the inverse-Wishart
  mean d / (n - d - 1) (n > d + 1) or n / (d - n - 1) (n < d - 1), so at noise 0 the
  curve is min(1, sqrt(d / n)), and with noise it blows up at n = d (no value within 1).
- ridge: the traces are integrals over the Marchenko-Pastur law of K^T K / (n s^2).
- hebbian (W = K^T V, Gaussian keys): cos ~ 1 / sqrt(1 + (n - 1 + noise^2 n) / d), the
  crosstalk of n - 1 other pairs, each of weight ~ 1/d.
- delta rule: no closed form (its fixed point depends on the order of the pairs); NaN.

All are large-d approximations; tests hold them to 0.01 for d >= 64 and n >= 2d.
"""

from __future__ import annotations

import math

import numpy as np

_QUADRATURE_POINTS = 4096


def theory_cos(kernel: str, d: int, n: int, noise: float = 0.0, lam: float | None = None,
               patterns: str = "gaussian") -> float:
    """Expected mean cosine between recalled and true values, NaN where none is known (the
    delta rule; real word vectors, whose keys are neither isotropic nor independent)."""
    if patterns == "glove":
        return math.nan
    if kernel == "hebbian":
        return 1.0 / math.sqrt(1.0 + (n - 1 + noise**2 * n) / d)
    if kernel == "pinv":
        if noise == 0:
            return min(1.0, math.sqrt(d / n))
        if n > d + 1:
            trace_inv = d / (n - d - 1)  # E tr (K^T K)^-1 in units of 1/s^2
        elif n < d - 1:
            trace_inv = n / (d - n - 1)  # E tr (K K^T)^-1
        else:
            return math.nan
        return (min(n, d) / n) / math.sqrt(min(n, d) / n + noise**2 * trace_inv)
    if kernel == "ridge":
        if lam is None or lam <= 0:
            return math.nan
        scale = 1.0 / d if patterns == "sphere" else 1.0
        tr_s, tr_s2, tr_noise = _ridge_traces(d, n, lam / scale)
        return (tr_s / n) / math.sqrt(tr_s2 / n + noise**2 * tr_noise)
    return math.nan


def _ridge_traces(d: int, n: int, lam: float) -> tuple[float, float, float]:
    """tr S, tr S^2 and tr(G (G + lam)^-2) for G = K^T K, K with unit-variance entries, as
    d times integrals over the Marchenko-Pastur law (ratio y = d / n, eigenvalues of G / n)."""
    y = d / n
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    # x = centre + half cos(theta) removes the square-root endpoints: a smooth integrand.
    theta = (np.arange(_QUADRATURE_POINTS) + 0.5) * math.pi / _QUADRATURE_POINTS
    centre, half = (a + b) / 2, (b - a) / 2
    x = centre + half * np.cos(theta)
    weight = (half * np.sin(theta)) ** 2 / (2 * math.pi * y * x) * (math.pi / _QUADRATURE_POINTS)
    mu = n * x  # eigenvalues of G; the point mass at 0 (when d > n) adds nothing to any trace
    f = mu / (mu + lam)
    return (d * float(np.sum(weight * f)), d * float(np.sum(weight * f * f)),
            d * float(np.sum(weight * mu / (mu + lam) ** 2)))


def baseline_cos(dv: int, patterns: str = "gaussian") -> float:
    """Expected cosine of two independent random vectors of a symmetric distribution: 0.
    NaN for word vectors (not symmetric: they share a mean direction)."""
    return math.nan if patterns == "glove" else 0.0


def baseline_dist(dv: int, patterns: str = "gaussian") -> float:
    """Expected euclidean distance between two independent random vectors of dimension dv
    (NaN for word vectors: only the empirical baseline exists)."""
    if patterns == "glove":
        return math.nan
    if patterns == "gaussian":
        # x - y ~ N(0, 2 I): sqrt(2) times the mean of a chi distribution with dv degrees.
        return math.sqrt(2) * math.sqrt(2) * math.exp(math.lgamma((dv + 1) / 2) - math.lgamma(dv / 2))
    if patterns == "binary":
        # ||x - y||^2 = 4 * (number of differing signs), a Binomial(dv, 1/2).
        k = np.arange(dv + 1)
        log_p = np.array([math.lgamma(dv + 1) - math.lgamma(i + 1) - math.lgamma(dv - i + 1) for i in k])
        return float(np.sum(np.exp(log_p - dv * math.log(2)) * 2 * np.sqrt(k)))
    if patterns == "sphere":
        if dv == 1:
            return 1.0  # x, y in {-1, 1}: distance 0 or 2
        # cos t of two uniform unit vectors has density ~ (1 - t^2)^((dv - 3) / 2).
        theta = (np.arange(_QUADRATURE_POINTS) + 0.5) * math.pi / _QUADRATURE_POINTS
        t = np.cos(theta)
        w = np.sin(theta) ** (dv - 2)
        return float(np.sum(w * np.sqrt(2 - 2 * t)) / np.sum(w))
    raise ValueError(f"unknown patterns {patterns!r}")
