"""Split assignment by query id: seeded, stable as the corpus grows, never leaking a query."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pipeline.errors import InfirError
from pipeline.release.schema import SPLITS


def normalize_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != len(SPLITS):
        raise InfirError(f"split ratios need {len(SPLITS)} values (train, validation, test), got {list(ratios)}")
    if any((not isinstance(r, (int, float))) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise InfirError(f"split ratios must be non-negative numbers with a positive sum, got {list(ratios)}")
    total = float(sum(ratios))
    return tuple(float(r) / total for r in ratios)  # type: ignore[return-value]


def unit_hash(seed: int, query_id: str) -> float:
    """sha256("<seed>:<query_id>") mapped to [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for(query_id: str, seed: int, ratios: Sequence[float]) -> str:
    x = unit_hash(seed, query_id)
    cum = 0.0
    for name, r in zip(SPLITS, ratios):
        cum += r
        if x < cum:
            return name
    # floating-point slack: fall back to the last split with a non-zero ratio
    return next(n for n, r in zip(reversed(SPLITS), reversed(tuple(ratios))) if r > 0)


def assign_splits(query_ids: Iterable[str], seed: int, ratios: Sequence[float]) -> list[str]:
    """Split name for every query id (same order). Depends only on (seed, ratios, query_id)."""
    norm = normalize_ratios(ratios)
    cache: dict[str, str] = {}
    out = []
    for q in query_ids:
        s = cache.get(q)
        if s is None:
            s = cache[q] = split_for(q, seed, norm)
        out.append(s)
    return out
