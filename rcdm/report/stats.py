"""Intervals for the report's numbers: a percentile bootstrap over images and the Wilson score interval.

Both are about the images, the unit that is sampled: the K samples of one image share its embedding, so they are
not independent draws, and an interval that counted them as such would be too narrow.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95  # every interval on the page is a 95% interval


def bootstrap(stat, per_image, num: int, seed: int) -> tuple[float, float] | None:
    """95% percentile interval of `stat(rows)` over `num` resamples (with replacement) of the rows of `per_image`
    (an array with one row per image). None with fewer than 2 images or when every replicate is undefined."""
    rows = np.asarray(per_image, dtype=np.float64)
    if len(rows) < 2 or num < 1:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(rows), num]))
    reps = np.array([stat(rows[rng.integers(0, len(rows), len(rows))]) for _ in range(num)], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return None
    lo, hi = np.quantile(reps, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def wilson(fraction: float, n: int) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion observed as `fraction` of `n` trials (Wilson 1927)."""
    if n < 1:
        return None
    z = 1.959963984540054
    centre = (fraction + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(fraction * (1 - fraction) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
