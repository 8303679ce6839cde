"""The figures of an audit: Wilson intervals, Cohen's kappa, the weighted share of valid rows."""

from __future__ import annotations

import math
from collections import Counter

Z95 = 1.959964


def wilson(k: int, n: int, z: float = Z95) -> dict:
    """k of n with its Wilson score interval (sound at small n and at shares near 0 or 1, where the
    normal approximation's interval leaves [0, 1])."""
    if n == 0:
        return {"valid": 0, "n": 0, "share": None, "low": None, "high": None}
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"valid": k, "n": n, "share": round(p, 6), "low": round(max(0.0, centre - half), 6),
            "high": round(min(1.0, centre + half), 6)}


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
    """The weighted share of True with a normal-approximation 95% interval whose variance is
    inflated by Kish's design effect of the weights, deff = n * sum(w^2) / sum(w)^2 (the effective
    sample size is n / deff). An approximation: good enough to say how far a stratified sample's
    estimate may be from the population's share; clipped to [0, 1]."""
    n = len(values)
    total = sum(weights)
    if n == 0 or total <= 0:
        return {"share": None, "low": None, "high": None, "n": n, "design_effect": None}
    p = sum(w for v, w in zip(values, weights) if v) / total
    deff = n * sum(w * w for w in weights) / (total * total)
    half = z * math.sqrt(p * (1 - p) * deff / n)
    return {"share": round(p, 6), "low": round(max(0.0, p - half), 6), "high": round(min(1.0, p + half), 6),
            "n": n, "design_effect": round(deff, 6)}
