"""The document pool a release split is evaluated against.

Ranking a test query only against the split's own P+/HN1/HN2 (a few hundred passages) puts
nDCG@10 at the ceiling for every model. The pool here is the split's passages, the split rows'
mined negatives (the retriever's hardest distractors for those very queries) and a seeded sample
of the rest of the collection, so the relevant passage has to beat thousands of real passages.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InfirError
from pipeline.train.data import SPLITS, clean_text, load_release_split, split_shards

__all__ = ["DEFAULT_POOL_SAMPLE", "EvalPool", "build_pool", "release_collection", "read_corpus_texts"]

#: Passages sampled from the rest of the collection (all of it when it is smaller).
DEFAULT_POOL_SAMPLE = 10_000

_PASSAGE_COLUMNS = ("document_positive", "hard_negative_document_1", "hard_negative_document_2")


@dataclass(frozen=True)
class EvalPool:
    docs: list[str]  # pool texts, in pool order (split passages, mined negatives, sample)
    split_passages: int  # how many of docs are the split's P+/HN1/HN2
    mined: int  # how many are the split rows' mined negatives (not already counted)
    sampled: int  # how many come from the rest of the collection
    collection_rest: int  # size of the rest the sample was drawn from
    collection: str  # where the rest came from


def _mined_texts(row: dict[str, Any]) -> list[str]:
    out = []
    for m in row.get("mined_negatives") or []:
        text = clean_text(m.get("text") if isinstance(m, dict) else None)
        if text:
            out.append(text)
    return out


def release_collection(release_dir: str | Path) -> list[str]:
    """Every passage text of the release, all splits (P+, HN1, HN2, mined negatives), first occurrence order."""
    seen: dict[str, None] = {}
    for split in SPLITS:
        try:
            split_shards(release_dir, split)
        except InfirError:
            continue  # a release may have an empty split
        for row in load_release_split(release_dir, split, columns=("mined_negatives",)):
            for c in _PASSAGE_COLUMNS:
                t = clean_text(row.get(c))
                if t:
                    seen.setdefault(t, None)
            for t in _mined_texts(row):
                seen.setdefault(t, None)
    return list(seen)


def read_corpus_texts(path: str | Path) -> list[str]:
    """Passage texts of a BEIR ``corpus.jsonl`` (``title + " " + text``), file order."""
    from pipeline.train.readers import iter_json_lines

    p = Path(path)
    if p.is_dir():
        p = p / "corpus.jsonl"
    if not p.is_file():
        raise InfirError(f"{p}: collection file not found (expected a BEIR corpus.jsonl)")
    out = []
    for lineno, obj in iter_json_lines(p):
        if not isinstance(obj, dict):
            raise InfirError(f"{p}:{lineno}: expected a JSON object with title/text")
        text = " ".join(x for x in (clean_text(obj.get("title")), clean_text(obj.get("text"))) if x)
        if text:
            out.append(text)
    return out


def build_pool(
    rows: Sequence[dict[str, Any]],
    collection: Sequence[str],
    sample_size: int = DEFAULT_POOL_SAMPLE,
    seed: int = 13,
    collection_name: str = "release",
) -> EvalPool:
    """Pool for ``rows`` (one split): their passages, their mined negatives, then
    ``min(sample_size, len(rest))`` passages drawn with ``random.Random(seed)`` from ``collection``
    minus those already in the pool. Texts are deduplicated; same inputs -> same pool, same order."""
    if sample_size < 0:
        raise InfirError(f"pool sample size must be >= 0, got {sample_size}")
    pool: dict[str, None] = {}
    for r in rows:
        for c in _PASSAGE_COLUMNS:
            t = clean_text(r.get(c))
            if t:
                pool.setdefault(t, None)
    n_split = len(pool)
    for r in rows:
        for t in _mined_texts(r):
            pool.setdefault(t, None)
    n_mined = len(pool) - n_split
    rest = [t for t in dict.fromkeys(clean_text(c) for c in collection) if t and t not in pool]
    k = min(sample_size, len(rest))
    sample = random.Random(seed).sample(rest, k) if k < len(rest) else rest
    docs = list(pool) + sample
    return EvalPool(docs, n_split, n_mined, len(sample), len(rest), collection_name)
