"""Quality measures over every candidate row: diversity, edit sizes, length ratios, leakage.

Every function takes plain lists of strings, so each measure can be checked on its own. Tokens
are lower-cased word characters (`\\w+`): punctuation and case never count as an edit or an n-gram.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter, defaultdict

import numpy as np
from rapidfuzz.distance import Levenshtein

_WORD = re.compile(r"\w+")


def tokens(text: str | list[str] | None) -> list[str]:
    """A text's tokens; a list is taken as already tokenized (the report tokenizes each field once)."""
    if isinstance(text, list):
        return text
    return _WORD.findall((text or "").lower())


def summary(values) -> dict:
    """n, mean and quantiles of a list of numbers (None when empty)."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"n": int(a.size), "mean": round(float(a.mean()), 4), "median": round(float(q[1]), 4),
            "p10": round(float(q[0]), 4), "p90": round(float(q[2]), 4),
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4)}


def histogram(values, bins: int = 20, lo: float | None = None, hi: float | None = None) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return {"edges": [], "counts": []}
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(np.clip(a, lo, hi), bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the texts (Li et al. 2016): 1.0 = no n-gram repeats."""
    seen: set = set()
    total = 0
    for t in texts:
        tok = tokens(t)
        grams = list(zip(*(tok[i:] for i in range(n))))
        total += len(grams)
        seen.update(grams)
    return round(len(seen) / total, 4) if total else None


def openings(texts: list[str], words: int = 3, top: int = 10) -> list[dict]:
    """The most frequent first `words` words: a templated generator shows one opening everywhere."""
    c = Counter(" ".join(tokens(t)[:words]) for t in texts if tokens(t))
    n = sum(c.values())
    return [{"opening": o, "rows": k, "share": round(k / n, 4)} for o, k in c.most_common(top)]


def distribution(values: list[str | None]) -> list[dict]:
    c = Counter(v if v else "(none)" for v in values)
    n = sum(c.values())
    return [{"value": v, "rows": k, "share": round(k / n, 4)} for v, k in c.most_common()]


def _shingles(tok: list[str]) -> set[int]:
    grams = [" ".join(tok[i:i + 2]) for i in range(max(1, len(tok) - 1))]
    return {zlib.crc32(g.encode()) for g in grams}


def _signatures(sets: list[set[int]], k: int, seed: int, chunk: int = 20_000) -> np.ndarray:
    """MinHash signatures (k x rows) of non-empty shingle sets, `chunk` rows at a time in numpy.
    (a*x + b) mod 2^64 with odd a is a universal-enough family for bucketing; Jaccard decides."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 62, size=k, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 62, size=k, dtype=np.uint64)
    sig = np.empty((k, len(sets)), dtype=np.uint64)
    for lo in range(0, len(sets), chunk):
        part = sets[lo:lo + chunk]
        flat = np.fromiter((x for s in part for x in s), dtype=np.uint64)
        starts = np.cumsum([0] + [len(s) for s in part[:-1]])
        sig[:, lo:lo + len(part)] = np.minimum.reduceat(a[:, None] * flat[None, :] + b[:, None], starts, axis=1)
    return sig


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def near_duplicates(texts: list[str], threshold: float = 0.7, seed: int = 0, bands: int = 16,
                    rows_per_band: int = 2, examples: int = 5, token_lists: list[list[str]] | None = None) -> dict:
    """Rows whose text has a near-duplicate (Jaccard of word-bigram sets >= threshold) in another row.

    MinHash with banding proposes candidates (a few dozen lines of numpy; not worth a dependency):
    rows sharing a band bucket are each checked exactly against the bucket's first row and grouped
    with union-find, so a template used by every row costs one comparison per row, not n^2."""
    sets = [_shingles(tokens(t)) for t in (token_lists if token_lists is not None else texts)]
    sig = _signatures(sets, bands * rows_per_band, seed)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        buckets: dict[bytes, int] = {}
        keys = np.ascontiguousarray(sig[band * rows_per_band:(band + 1) * rows_per_band].T)
        for i, key in enumerate(keys):
            j = buckets.setdefault(key.tobytes(), i)
            if j != i and find(i) != find(j) and jaccard(sets[i], sets[j]) >= threshold:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    dup = [g for g in groups.values() if len(g) > 1]
    in_dup = sum(len(g) for g in dup)
    dup.sort(key=len, reverse=True)
    return {
        "threshold": threshold,
        "rows": len(texts),
        "rows_with_near_duplicate": in_dup,
        "share": round(in_dup / len(texts), 4) if texts else None,
        "groups": len(dup),
        "largest": [{"rows": len(g), "example": texts[g[0]]} for g in dup[:examples]],
    }


def token_edit_distances(a: list[str], b: list[str]) -> list[int]:
    """Word-level Levenshtein distance of each pair (how many words I- changes in I+, say)."""
    return [Levenshtein.distance(tokens(x), tokens(y)) for x, y in zip(a, b)]


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest run of consecutive tokens that `a` and `b` share."""
    where: dict[str, list[int]] = defaultdict(list)
    for j, t in enumerate(b):
        where[t].append(j)
    best = 0
    for i, t in enumerate(a):
        for j in where.get(t, ()):
            if i and j and a[i - 1] == b[j - 1]:
                continue  # inside a run already measured from its start
            k = 1
            while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                k += 1
            best = max(best, k)
    return best


def leakage(instructions: list[str], passages: list[str], n: int = 6) -> dict:
    """Long n-gram overlap of I+ with P+: an instruction that quotes the passage gives it away."""
    runs = [longest_common_run(tokens(i), tokens(p)) for i, p in zip(instructions, passages)]
    leaked = sum(1 for r in runs if r >= n)
    return {"n": n, "rows": len(runs), "rows_leaking": leaked,
            "share": round(leaked / len(runs), 4) if runs else None,
            "longest_run": summary(runs), "hist": histogram(runs, bins=min(20, max(runs, default=0) + 1), lo=0),
            "runs": runs}
