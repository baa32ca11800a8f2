"""Capacity search: the largest n at which a memory's nearest-neighbour accuracy holds.

For one (memory setting, d), probe n = start, 2 start, 4 start, ... until the mean accuracy
over seeds falls below the threshold (or the cap is reached), then bisect between the last n
that held and the first that did not, down to a resolution of 1/RESOLUTION of n (exactly, for
small n). Every probe is a sweep cell run with the same seeds, so the answer is reproducible
and a resumed search reuses the probes it already ran. The search assumes accuracy falls with
n; the probes are stored with the answer so a non-monotone case can be seen.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

# Bisection stops when the bracket is at most max(1, lo // RESOLUTION) wide.
RESOLUTION = 32


class Probe(NamedTuple):
    n: int
    acc: float     # mean over seeds (NaN if no seed ran cleanly)
    status: str    # "ok", or the first other status among the seeds ("nan", "error", "skipped")


class Capacity(NamedTuple):
    capacity: int        # the largest probed n that held (0: even the first probe failed)
    capped: bool         # held at the cap: the true capacity is >= max_n
    acc: float           # mean accuracy at ``capacity`` (NaN when 0)
    probes: list[Probe]  # in the order run

    def text(self, start: int, max_n: int) -> str:
        if self.capped:
            return f">= {max_n}"
        return f"< {start}" if self.capacity == 0 else str(self.capacity)


def holds(probe: Probe, threshold: float) -> bool:
    return probe.status == "ok" and not math.isnan(probe.acc) and probe.acc >= threshold


def search(probe: Callable[[int], Probe], threshold: float, max_n: int, start: int = 1) -> Capacity:
    """Doubling from ``start`` (clipped to ``max_n``), then bisection."""
    if not 1 <= start <= max_n:
        raise ValueError(f"start = {start} must be between 1 and max_n = {max_n}")
    probes: list[Probe] = []
    good: Probe | None = None

    def run(n: int) -> Probe:
        result = probe(n)
        probes.append(result)
        return result

    n = start
    while True:
        result = run(n)
        if not holds(result, threshold):
            bad = n
            break
        good = result
        if n >= max_n:
            return Capacity(n, True, result.acc, probes)
        n = min(2 * n, max_n)
    if good is None:
        return Capacity(0, False, math.nan, probes)
    while bad - good.n > max(1, good.n // RESOLUTION):
        mid = (good.n + bad) // 2
        result = run(mid)
        if holds(result, threshold):
            good = result
        else:
            bad = mid
    return Capacity(good.n, False, good.acc, probes)


def start_n(cell) -> int:
    """The smallest n a setting can run: k for top-k attention, else 1."""
    return cell.topk if cell.separation == "topk" else 1
