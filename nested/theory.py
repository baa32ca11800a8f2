"""Theory of the soft nested read where it is known: the mean-field weight on the true path.

Keys with independent N(0, 1/d) coordinates, queried exactly, dot-product scores: at each level
the true child scores |k|^2 ~ 1 and each of the other b - 1 siblings k . k' ~ N(0, 1/d), so the
softmax weight on the true child is, in the mean-field approximation (the sum over siblings
replaced by its mean, E exp(beta s) = exp(beta^2 / 2d)),

    p = 1 / (1 + (b - 1) exp(beta^2 / (2 d) - beta)),

and the weight on the true path of length m is p^m: the product of per-level weights (the levels'
keys are independent). It holds where the siblings' sum concentrates (b large or beta small
against sqrt(d)); a test checks it against measured weights.

Greedy (top-1) selection keeps the true child unless a sibling outscores it. Given the true key
k, its score is t = |k|^2 (d t ~ chi-square with d degrees of freedom) and each sibling's is
N(0, t / d), independent, so a level is passed with probability

    s = E[ Phi(sqrt(x))^(b - 1) ],  x ~ chi2(d),

and a path of length m is read right with probability s^m (the levels' keys are independent).
A wider beam can only do better; with exact queries s is 1 - O(b e^(-d/2)): top-1 misses only
at small d or with noisy queries.
"""

from __future__ import annotations

import math
from functools import lru_cache


def level_weight(branching: int, d: int, beta: float) -> float:
    """Mean-field softmax weight on the true child among ``branching`` children."""
    if branching <= 1:
        return 1.0
    return 1.0 / (1.0 + (branching - 1) * math.exp(beta * beta / (2 * d) - beta))


def true_path_weight(length: int, branching: int, d: int, beta: float) -> float:
    """Mean-field weight of the soft read on the true path of ``length`` levels."""
    return level_weight(branching, d, beta) ** length


@lru_cache(maxsize=None)
def greedy_level_hit(branching: int, d: int) -> float:
    """Probability that top-1 selection picks the true child among ``branching`` (exact query,
    keys with N(0, 1/d) coordinates, dot-product scores)."""
    if branching <= 1:
        return 1.0
    from scipy import integrate, stats

    value, _ = integrate.quad(lambda x: stats.chi2.pdf(x, d) * stats.norm.cdf(math.sqrt(x)) ** (branching - 1),
                              0, math.inf, limit=200)
    return min(1.0, value)


def greedy_path_hit(length: int, branching: int, d: int) -> float:
    """Probability that top-1 selection follows the whole true path of ``length`` levels."""
    return greedy_level_hit(branching, d) ** length
