"""Retrieval for the LLM stages: near misses for the generate prompt, mined negatives for mine.

Each row is one (query, positive) pair; its known positives are every judged positive of the query.
Indexes live in `runs/<run>/index/`, keyed by the collection's content fingerprint.
"""

from __future__ import annotations

from contextlib import contextmanager

import pyarrow as pa

from pipeline.errors import InfirError
from pipeline.stages.common import run_dir
from pipeline.stages.source import read_collection
from pipeline.store import require_stage
from pipeline.store.ids import canonical_json

NEGATIVE_TYPE = pa.struct(
    [
        ("passage_id", pa.string()),
        ("text", pa.string()),
        ("score", pa.float64()),
        ("rank", pa.int32()),
        ("method", pa.string()),
    ]
)


def _collection(cfg):
    import hashlib

    rd = run_dir(cfg)
    success = require_stage(rd, "source")
    shas = sorted(s["sha256"] for s in success["shards"] if s["name"].startswith("collection/"))
    fingerprint = hashlib.sha256(canonical_json(shas).encode()).hexdigest()[:16]
    return read_collection(rd), fingerprint, rd / "index"


@contextmanager
def _index_io(index_dir):
    # Index writers do not always name their file (Arrow: "Error writing bytes to file"): name the folder.
    try:
        yield
    except OSError as e:
        raise InfirError(f"{index_dir}: cannot write or read the retrieval index: {e.strerror or e}") from None


def _queries(rows: list[dict]):
    from pipeline.retrieval import MiningQuery

    return [
        MiningQuery(
            qid=r["id"],
            text=r["query_positive"],
            positive_ids=[r["passage_id"]] + [p for p in r["positive_ids"] if p != r["passage_id"]],
            positive_texts=[r["document_positive"]],
        )
        for r in rows
    ]


def near_misses(cfg, rows: list[dict], k: int) -> dict:
    """Top-k BM25 passages per row, positives excluded, no margin filter: the closest misses."""
    from pipeline.retrieval import neighbours

    paths, fingerprint, index_dir = _collection(cfg)
    with _index_io(index_dir):
        return neighbours(_queries(rows), paths, index_dir=index_dir, k=k, fingerprint=fingerprint)


def mined_negatives(cfg, rows: list[dict]) -> dict[str, list[dict]]:
    """Hard negatives per row id under the configured mining policy (window, margin, dedup)."""
    from pipeline.retrieval import mine_hard_negatives

    paths, fingerprint, index_dir = _collection(cfg)
    with _index_io(index_dir):
        mined = mine_hard_negatives(_queries(rows), paths, cfg.mine.retrieval, index_dir, fingerprint=fingerprint)
    return {r["id"]: [n.to_dict() for n in mined.get(r["id"], [])] for r in rows}
