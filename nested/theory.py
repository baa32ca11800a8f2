"""Theory of the soft nested read where it is known: the mean-field weight on the true path.

Keys with independent N(0, 1/d) coordinates, queried exactly, dot-product scores: at each level
the true child scores |k|^2 ~ 1 and each of the other b - 1 siblings k . k' ~ N(0, 1/d), so the
softmax weight on the true child is, in the mean-field approximation (the sum over siblings
replaced by its mean, E exp(beta s) = exp(beta^2 / 2d)),

    p = 1 / (1 + (b - 1) exp(beta^2 / (2 d) - beta)),

and the weight on the true path of length m is p^m: the product of per-level weights (the levels'
keys are independent). It holds where the siblings' sum concentrates (b large or beta small
against sqrt(d)); a test checks it against measured weights.
"""

from __future__ import annotations

import math


def level_weight(branching: int, d: int, beta: float) -> float:
    """Mean-field softmax weight on the true child among ``branching`` children."""
    if branching <= 1:
        return 1.0
    return 1.0 / (1.0 + (branching - 1) * math.exp(beta * beta / (2 * d) - beta))


def true_path_weight(length: int, branching: int, d: int, beta: float) -> float:
    """Mean-field weight of the soft read on the true path of ``length`` levels."""
    return level_weight(branching, d, beta) ** length
