"""Retrieval for the LLM stages (the glue between stage rows and `pipeline.retrieval`): near
misses for the generate prompt, mined negatives for mine.

Each row is one (query, positive) pair; its known positives are every judged positive of the query.
`ctx.collection()` is the run's passage collection; indexes live in `runs/<run>/index/`, keyed
by the collection's content fingerprint.
"""

from __future__ import annotations

from contextlib import contextmanager

from pipeline.errors import InfirError


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


def near_misses(ctx, rows: list[dict], k: int) -> dict:
    """Top-k BM25 passages per row, positives excluded, no margin filter: the closest misses."""
    from pipeline.retrieval import neighbours

    paths, fingerprint, index_dir = ctx.collection()
    with _index_io(index_dir):
        return neighbours(_queries(rows), paths, index_dir=index_dir, k=k, fingerprint=fingerprint)


def mined_negatives(ctx, rows: list[dict], settings) -> dict[str, list[dict]]:
    """Hard negatives per row id under the configured mining policy (window, margin, dedup)."""
    from pipeline.retrieval import mine_hard_negatives

    paths, fingerprint, index_dir = ctx.collection()
    with _index_io(index_dir):
        mined = mine_hard_negatives(_queries(rows), paths, settings, index_dir, fingerprint=fingerprint)
    return {r["id"]: [n.to_dict() for n in mined.get(r["id"], [])] for r in rows}


def encode_collection_on_ray(ctx, settings) -> dict | None:
    """Dense / hybrid mining on the Ray executor: the collection's embeddings made on Ray Data first
    (`retrieval.ray_encode`), so the index the mining builds finds every passage already encoded."""
    if settings.method not in ("dense", "hybrid"):
        return None
    from pipeline.retrieval.ray_encode import encode_collection

    paths, fingerprint, index_dir = ctx.collection()
    with _index_io(index_dir):
        return encode_collection(paths, index_dir, settings, fingerprint)
