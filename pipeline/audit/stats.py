"""The figures of an audit: Wilson intervals, Cohen's kappa, the weighted share of valid rows."""

from __future__ import annotations

import math
from collections import Counter

Z95 = 1.959964


def wilson_bounds(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share p over n (n may be an effective, fractional size)."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson(k: int, n: int, z: float = Z95) -> dict:
    """k of n with its Wilson score interval (sound at small n and at shares near 0 or 1, where the
    normal approximation's interval leaves [0, 1] or shrinks to nothing)."""
    if n == 0:
        return {"valid": 0, "n": 0, "share": None, "low": None, "high": None}
    low, high = wilson_bounds(k / n, n, z)
    return {"valid": k, "n": n, "share": round(k / n, 6), "low": round(low, 6), "high": round(high, 6)}


def cohen_kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two annotators' answers to the same items. Written here rather than taken
    from scikit-learn: sklearn is not a dependency of infir's core (only the train extra pulls it
    in), and the formula is four lines. None where it is undefined (chance agreement is 1: both
    gave one same answer throughout)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    if expected == 1:
        return None
    return round((observed - expected) / (1 - expected), 6)


def weighted_share(values: list[bool], weights: list[float], z: float = Z95) -> dict:
    """The weighted share of True with a 95% interval: the Wilson interval at Kish's effective
    sample size n / deff, deff = n * sum(w^2) / sum(w)^2 (the design effect of unequal weights). An
    approximation, good enough to say how far a stratified sample's estimate may be from the
    population's share; Wilson rather than the normal interval, which collapses to a point when
    every labelled row is valid (a common case for a good judge)."""
    n = len(values)
    total = sum(weights)
    if n == 0 or total <= 0:
        return {"share": None, "low": None, "high": None, "n": n, "design_effect": None}
    p = sum(w for v, w in zip(values, weights) if v) / total
    deff = n * sum(w * w for w in weights) / (total * total)
    low, high = wilson_bounds(p, n / deff, z)
    return {"share": round(p, 6), "low": round(low, 6), "high": round(high, 6), "n": n,
            "effective_n": round(n / deff, 6), "design_effect": round(deff, 6)}
