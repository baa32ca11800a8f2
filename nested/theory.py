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
With exact queries s is 1 - O(b e^(-d/2)): top-1 misses only at small d or with noisy queries.

Who competes: the read descends only through slots that hold a nested dictionary, so above the
read-out level the true child competes with its siblings that nest (c of them), at the read-out
level with every other slot of its node; ``path_competitors`` counts them along each path of a
real tree, and the hit probability is the product of the levels' (exact for top-1).

A beam of k keeps the true child unless k candidates outscore it. Its siblings alone (same
parent, so the same order as their scores) give the level's pass probability

    s_k(c) = E[ P(Binomial(c, 1 - Phi(sqrt(x))) <= k - 1) ],  x ~ chi2(d),

and the beam keeps the whole path with probability at most prod_l s_k(c_l): children of the other
beam entries can only push the true child out (s_1 is the greedy formula above, and for k = 1 the
product is exact). A pessimistic counterpart counts every candidate of the beam as a sibling:
below the root, c + (k - 1)(c + 1) competitors. The measured share lies between the two where
the tests look (30 trees of depth 3, b = 8, at d = 4 and 8, k = 2 and 4; the gap closes as d
grows).

Both beam results assume the other beam entries' children hold keys of their own: where keys
coincide across parents (collision, random, cartesian forms) another entry's child can carry the
query's own key and tie with the true child, so only the exact k = 1 product is drawn there.

The flat pseudoinverse memory over composite keys (nested.flat) recalls stored key i's value as
row i of H V, H = C C^+ the projection onto the column space of the P x D composite-key matrix C:
with values independent of the keys (a value of its own per path, dv coordinates), row i is
h_i v_i plus a sum of the other values weighted by H_ij, whose squared norm is about
(h_i - h_i^2) |v|^2, so recall i has cosine sqrt(h_i) with its true value up to O(1 / sqrt(dv))
(h_i = H_ii: the leverage of path i; sum_i h_i = rank C). The mean cosine is therefore at most
sqrt(rank C / P) (Jensen; equality at uniform leverage), and every path reads back exactly when
rank C = P: the rank is the flat memory's bundling capacity. Circular convolution of Gaussian
keys is multilinear, so generic paths give independent composites and the capacity is D; the
linear compositions (sum, hadamard, concat) inherit the rank of the path-key incidence, which
coinciding keys lower (paths (a, c), (a, c'), (b, c), (b, c') are linearly dependent) and make
uneven (a path whose composite the others nearly span has a small leverage): the collision form's
flat memory loses paths long before P reaches D.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple


def level_weight(branching: int, d: int, beta: float) -> float:
    """Mean-field softmax weight on the true child among ``branching`` children."""
    if branching <= 1:
        return 1.0
    return 1.0 / (1.0 + (branching - 1) * math.exp(beta * beta / (2 * d) - beta))


def true_path_weight(length: int, branching: int, d: int, beta: float) -> float:
    """Mean-field weight of the soft read on the true path of ``length`` levels."""
    return level_weight(branching, d, beta) ** length


@lru_cache(maxsize=None)
def beam_level_hit(competitors: int, d: int, k: int = 1) -> float:
    """Probability that fewer than k of ``competitors`` siblings outscore the true child (exact
    query, keys with N(0, 1/d) coordinates, dot-product scores): s_k(c) above."""
    if competitors < k:
        return 1.0
    from scipy import integrate, stats

    value, _ = integrate.quad(
        lambda x: stats.chi2.pdf(x, d) * stats.binom.cdf(k - 1, competitors, stats.norm.sf(math.sqrt(x))),
        0, math.inf, limit=200)
    return min(1.0, value)


def greedy_level_hit(branching: int, d: int) -> float:
    """Probability that top-1 selection picks the true child among ``branching``."""
    return beam_level_hit(max(branching - 1, 0), d, 1)


def greedy_path_hit(length: int, branching: int, d: int) -> float:
    """Probability that top-1 selection follows the whole true path of ``length`` levels, every
    node holding ``branching`` slots that all nest (a full tree)."""
    return greedy_level_hit(branching, d) ** length


def beam_path_hit(competitors, d: int, k: int = 1, *, pessimistic: bool = False) -> float:
    """prod_l s_k(c_l) over one path's competitor counts (nested.build.path_competitors; -1
    past the path's end): exact for k = 1, an upper bound on the beam keeping the path for k >
    1; ``pessimistic``: below the root, the other k - 1 beam entries' children compete as
    siblings too (see the module docstring)."""
    total = 1.0
    for level, c in enumerate(int(c) for c in competitors):
        if c >= 0:
            total *= beam_level_hit(c + (k - 1) * (c + 1) if pessimistic and level > 0 else c, d, k)
    return total


class FlatPinv(NamedTuple):
    """What the keys of a flat pinv memory predict (module docstring): cos, the mean of
    sqrt(h_i) over the paths asked about; bound, sqrt(rank / P); rank, its bundling capacity."""

    cos: float
    bound: float
    rank: int


def flat_pinv(composites, which=None) -> FlatPinv:
    """Leverage theory of a pinv memory over the (P, D) composite keys (float64 SVD); ``which``:
    the indices of the paths queried (default all). The rank counts singular values above the
    keys' own rounding (max(P, D) eps s_max, eps of their dtype): float32 sums of coinciding
    keys are dependent only to 1e-8, and a float32 memory cannot use those directions."""
    import numpy as np

    given = np.asarray(composites)
    eps = np.finfo(given.dtype if np.issubdtype(given.dtype, np.floating) else np.float64).eps
    c = given.astype(np.float64)
    if not len(c):
        return FlatPinv(math.nan, math.nan, 0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    rank = int(np.sum(s > s.max() * max(c.shape) * eps)) if s.size and s.max() > 0 else 0
    leverage = np.sum(u[:, :rank] ** 2, axis=1)
    picked = leverage if which is None else leverage[np.asarray(which)]
    return FlatPinv(float(np.mean(np.sqrt(np.clip(picked, 0.0, 1.0)))), math.sqrt(min(rank, len(c)) / len(c)), rank)
