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


# ---------------------------------------------------------------------------------------------
# Attention memories. A query equal to stored key i scores mu against it and, against each of
# the n - 1 other (independent) keys, a score that is ~ Normal(0, sigma^2) for large d. The
# mean-field weight on the right key replaces the sum over the others by its expectation,
# E exp(beta s) = exp(beta^2 sigma^2 / 2):
#
#     Z = exp(beta mu) + (n - 1) exp(beta^2 sigma^2 / 2),   p = exp(beta mu) / Z,
#
# e.g. p = 1 / (1 + (n - 1) exp(beta^2 / (2d) - beta)) for unit keys and the dot product. The
# recalled value is p v_i + sum_j w_j v_j; with independent values of equal norm
# cos = p / sqrt(p^2 + sum_j w_j^2) and sum_j w_j^2 = (n - 1) exp(2 beta^2 sigma^2) / Z^2.
# The law of large numbers behind it needs n - 1 >> exp(beta^2 sigma^2) (a log-normal sum
# concentrates slowly); below that a few keys dominate and the formula is only indicative.

# (mu, sigma^2) of the scores, per (similarity, patterns), for dimension d: the self score and
# the variance of the others' (Gaussian approximation, used for the weight and the capacity scale).
_SCORE_MOMENTS = {
    ("dot", "sphere"): lambda d: (1.0, 1.0 / d),
    ("scaled_dot", "sphere"): lambda d: (d**-0.5, 1.0 / d**2),
    ("dot", "gaussian"): lambda d: (float(d), float(d)),
    ("scaled_dot", "gaussian"): lambda d: (d**0.5, 1.0),
    ("dot", "binary"): lambda d: (float(d), float(d)),
    ("scaled_dot", "binary"): lambda d: (d**0.5, 1.0),
}
for _p in ("sphere", "gaussian", "binary"):
    _SCORE_MOMENTS[("cosine", _p)] = lambda d: (1.0, 1.0 / d)


def softmax_weight(d: int, n: int, beta: float, similarity: str = "dot", patterns: str = "sphere") -> float:
    """Mean-field softmax weight on the right key when the query is that stored key, in the
    Gaussian approximation of the other scores (NaN where the score moments are not known)."""
    moments = _SCORE_MOMENTS.get((similarity, patterns))
    if moments is None:
        return math.nan
    mu, var = moments(d)
    # In logs: exp(beta mu) overflows for the raw dot product of Gaussian keys.
    log_rest = math.log(n - 1) + beta**2 * var / 2 - beta * mu if n > 1 else -math.inf
    return 1.0 / (1.0 + math.exp(min(log_rest, 700.0)))


def _log_mgf_cosine(d: int, t: float) -> float:
    """log E exp(t c) for c the cosine of two independent uniform directions in R^d (density
    ~ (1 - c^2)^((d - 3) / 2)), by quadrature in the angle."""
    if d == 1:
        return math.log(math.cosh(t))
    theta = (np.arange(_QUADRATURE_POINTS) + 0.5) * math.pi / _QUADRATURE_POINTS
    log_w = (d - 2) * np.log(np.sin(theta))
    x = t * np.cos(theta) + log_w
    top = x.max()
    return float(top + np.log(np.sum(np.exp(x - top))) - (log_w.max() + np.log(np.sum(np.exp(log_w - log_w.max())))))


def _self_and_log_mgf(similarity: str, patterns: str, d: int, r):
    """(self score, log E exp(t s) of another key's score as a function of t), given the
    query's squared norm over d, r (1 except for Gaussian keys). Exact for each law: a
    Gaussian given the query for Gaussian keys, cosh^d for +-1 keys, the cosine law on the
    sphere."""
    if similarity == "cosine" or (patterns == "sphere" and similarity == "dot"):
        return 1.0, lambda t: _log_mgf_cosine(d, t)
    if patterns == "sphere" and similarity == "scaled_dot":
        return d**-0.5, lambda t: _log_mgf_cosine(d, t * d**-0.5)
    scale = 1.0 if similarity == "dot" else d**-0.5
    if patterns == "gaussian":
        return d * r * scale, lambda t: (t * scale) ** 2 * d * r / 2
    if patterns == "binary":
        return d * scale, lambda t: d * math.log(math.cosh(t * scale))
    raise ValueError(f"no score law for {similarity!r} over {patterns!r}")


def softmax_cos(d: int, n: int, beta: float, similarity: str = "dot", patterns: str = "sphere") -> float:
    """Mean-field cosine between the softmax recall of a stored key and its value.

    With independent values of equal norm, p and Z cancel:
    cos = 1 / sqrt(1 + (n - 1) E[exp(2 beta s)] / exp(2 beta mu)), s another key's score, mu
    the self score; averaged over the query's norm r ~ chi^2_d / d for Gaussian keys. NaN where
    the mean field does not hold: the sum of the n - 1 terms exp(2 beta s_j) concentrates only
    when n - 1 >= E[exp(4 beta s)] / E[exp(2 beta s)]^2 (its relative spread is then <= 1)."""
    if (similarity, patterns) not in _SCORE_MOMENTS:
        return math.nan
    if n == 1:
        return 1.0
    gaussian_norm = patterns == "gaussian" and similarity != "cosine"
    nodes, weights = _chi2_over_d(d) if gaussian_norm else (np.ones(1), np.ones(1))
    _, log_mgf = _self_and_log_mgf(similarity, patterns, d, 1.0)
    if math.log(n - 1) < log_mgf(4 * beta) - 2 * log_mgf(2 * beta):
        return math.nan
    total = 0.0
    for r, w in zip(nodes, weights):
        mu, log_mgf = _self_and_log_mgf(similarity, patterns, d, r)
        log_sq = math.log(n - 1) + log_mgf(2 * beta) - 2 * beta * mu
        total += w / math.sqrt(1.0 + math.exp(min(log_sq, 700.0)))
    return float(total)


def _chi2_over_d(d: int, points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Nodes r and weights (summing to 1) of chi^2_d / d, on a grid that covers +-12 sd."""
    sd = math.sqrt(2.0 / d)
    r = np.linspace(max(1e-9, 1 - 12 * sd), 1 + 12 * sd, points)
    x = r * d
    log_density = (d / 2 - 1) * np.log(x) - x / 2
    w = np.exp(log_density - log_density.max())
    return r, w / w.sum()


def softmax_capacity_scale(d: int, beta: float, similarity: str = "dot", patterns: str = "gaussian") -> float:
    """The n at which the mean-field weight on the right key falls to 1/2:
    1 + exp(beta mu - beta^2 sigma^2 / 2). Exponential in beta mu: in d for the raw dot
    product of Gaussian keys (mu = d), in sqrt(d) for the scaled dot product."""
    moments = _SCORE_MOMENTS.get((similarity, patterns))
    if moments is None:
        return math.nan
    mu, var = moments(d)
    exponent = beta * mu - beta**2 * var / 2
    return math.inf if exponent > 700 else 1.0 + math.exp(exponent)


def cell_cos(cell) -> float:
    """Theory cosine of a spec cell (bench.spec.Cell), NaN where none is known."""
    if cell.kernel != "attention":
        return math.nan if cell.mask else theory_cos(cell.kernel, cell.d, cell.n, cell.noise, cell.lam, cell.patterns)
    if cell.patterns == "glove" or cell.mask or cell.heads != 1 or cell.steps != 1:
        return math.nan
    if cell.separation == "identity" and cell.similarity in ("dot", "scaled_dot"):
        # Linear attention is the Hebbian memory: sum_j (q . k_j) v_j = q K^T V (any positive scale).
        return theory_cos("hebbian", cell.d, cell.n, cell.noise)
    if cell.noise:
        return math.nan
    if cell.separation == "softmax":
        return softmax_cos(cell.d, cell.n, cell.beta, cell.similarity, cell.patterns)
    if cell.separation == "max" and cell.similarity in ("cosine", "euclidean", "manhattan"):
        return 1.0  # the stored key itself is the unique best match of an exact query
    return math.nan


def capacity_scale(cell) -> float:
    """An analytic capacity scale of a setting (bench.spec.Cell, any n), NaN where none is
    known. Scales, not the exact n at a given accuracy: pinv recalls exactly while n <= d
    (exact queries); softmax attention: softmax_capacity_scale; polynomial attention
    (dense associative memory, Krotov & Hopfield): ~ d^(degree - 1), returned with constant 1;
    max with cosine / euclidean / manhattan and exact queries: unbounded (inf)."""
    if cell.patterns == "glove" or cell.noise or (cell.mask or 0) or (cell.heads or 1) != 1 or (cell.steps or 1) != 1:
        return math.nan
    if cell.kernel == "pinv":
        return float(cell.d)
    if cell.kernel != "attention":
        return math.nan
    if cell.separation == "softmax":
        return softmax_capacity_scale(cell.d, cell.beta, cell.similarity, cell.patterns)
    if cell.separation == "polynomial":
        return float(cell.d) ** (cell.degree - 1)
    if cell.separation == "max" and cell.similarity in ("cosine", "euclidean", "manhattan"):
        return math.inf
    return math.nan
