"""Instruction-following evaluation: on a release split (nDCG/MRR, p-MRR) and on BEIR-layout data.

Scores are cosine similarities of normalised embeddings. Ranks use the tie rule of
:mod:`pipeline.train.metrics` (MTEB's: stable sort, earlier pool position wins ties); nDCG and MRR
are computed by pytrec_eval on runs in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InfirError
from pipeline.train.data import (
    DEFAULT_TEMPLATE, INFIR_COLUMNS, check_template, clean_text, format_query, load_release_split,
)
from pipeline.train.metrics import ir_metrics, mean, pmrr_pair, ranks_of_targets, run_from_ranking
from pipeline.train.pool import DEFAULT_POOL_SAMPLE, EvalPool, build_pool, read_corpus_texts, release_collection
from pipeline.train.readers import read_jsonl, read_qrels

__all__ = ["evaluate_release", "evaluate_beir", "encode_texts", "score_runs", "PMRR_SCALE"]

PMRR_SCALE = "raw mean in [-1, 1], as MTEB's calculate_pmrr returns it (no x100)"
_K = 10
_ENCODE_CHUNK = 512  # texts per progress update


def encode_texts(model, texts: Sequence[str], batch_size: int = 64, label: str | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text (duplicate texts encoded once).

    With ``label``, a progress bar (stderr, terminals only) counts the texts encoded."""
    from pipeline.progress import progress_bar

    uniq = list(dict.fromkeys(texts))
    if not uniq:
        return np.zeros((0, 0), dtype=np.float32)
    parts = []
    with progress_bar(f"encode {label}" if label else "encode", len(uniq)) as (bar, task):
        for s in range(0, len(uniq), _ENCODE_CHUNK):
            chunk = uniq[s : s + _ENCODE_CHUNK]
            emb = model.encode(
                chunk, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
            parts.append(np.asarray(emb, dtype=np.float32))
            bar.update(task, advance=len(chunk))
    emb = np.concatenate(parts, axis=0)
    index = {t: i for i, t in enumerate(uniq)}
    return emb[[index[t] for t in texts]]


def _model(model_path_or_model: Any, max_seq_length: int | None = None):
    from pipeline.train.trainer import load_model

    return load_model(model_path_or_model, max_seq_length=max_seq_length)


def score_runs(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    doc_ids: Sequence[str],
    targets: np.ndarray | None = None,
    depth: int = _K,
) -> tuple[list[dict[str, float]], np.ndarray | None]:
    """Per query: its top-``depth`` run (for pytrec_eval) and, with ``targets``, the full-pool rank
    of ``targets[i]``; computed in query chunks so the score matrix stays small."""
    n_q, n_d = query_emb.shape[0], doc_emb.shape[0]
    chunk = max(1, (1 << 24) // max(n_d, 1))
    runs: list[dict[str, float]] = []
    ranks = np.empty(n_q, dtype=np.int64) if targets is not None else None
    for s in range(0, n_q, chunk):
        scores = query_emb[s : s + chunk] @ doc_emb.T
        if targets is not None:
            ranks[s : s + chunk] = ranks_of_targets(scores, targets[s : s + chunk])
        runs.extend(run_from_ranking(doc_ids, row, depth) for row in scores)
    return runs, ranks




def _complete_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The rows with every InF-IR text present, as read (for their mined negatives) and as stripped texts."""
    usable = [r for r in rows if all(clean_text(r.get(c)) for c in INFIR_COLUMNS)]
    return usable, [{c: clean_text(r.get(c)) for c in INFIR_COLUMNS} for r in usable]


def _release_pool(
    release_dir: str | Path, usable: list[dict[str, Any]], collection: str | Path | None, pool_sample: int, pool_seed: int
) -> EvalPool:
    """:func:`build_pool` over every passage of the release, or over ``collection`` (a BEIR corpus) when given."""
    if collection is None:
        coll, coll_name = release_collection(release_dir), "release passages (all splits, mined negatives included)"
    else:
        coll, coll_name = read_corpus_texts(collection), str(collection)
    return build_pool(usable, coll, pool_sample, pool_seed, coll_name)


def _query_sets(template: str, v: list[dict[str, str]]) -> list[list[str]]:
    """Per row: og = (Q+, I+), instruction changed = (Q+, I-), query changed = (Q-, I+), and Q+ alone."""
    return [
        [format_query(template, x["query_positive"], x["instruction_positive"]) for x in v],
        [format_query(template, x["query_positive"], x["instruction_negative"]) for x in v],
        [format_query(template, x["query_negative"], x["instruction_positive"]) for x in v],
        [format_query(template, x["query_positive"], None) for x in v],
    ]


def _rank(
    model,
    docs: list[str],
    doc_ids: list[str],
    query_sets: list[list[str]],
    targets: np.ndarray,
    batch_size: int,
    k: int,
) -> list[tuple[list[dict[str, float]], np.ndarray]]:
    """Per query set: its top-``k`` runs and the full-pool rank of each row's P+."""
    d_emb = encode_texts(model, docs, batch_size, label="pool")
    q_emb = encode_texts(model, [q for qs in query_sets for q in qs], batch_size, label="queries")
    n = len(targets)
    return [score_runs(q_emb[i * n : (i + 1) * n], d_emb, doc_ids, targets, k) for i in range(len(query_sets))]


def _scores(
    ranked: list[tuple[list[dict[str, float]], np.ndarray]], doc_ids: list[str], targets: np.ndarray, k: int
) -> dict[str, Any]:
    """nDCG@k and MRR@k with and without the instruction, p-MRR of the instruction and the query change."""
    (run_og, r_og), (_, r_inst), (_, r_query), (run_only, _) = ranked
    qrels = {f"q{i}": {doc_ids[targets[i]]: 1} for i in range(len(targets))}

    def metrics(runs: list[dict[str, float]]) -> dict[str, float]:
        # runs are cut at k, so reciprocal rank is MRR@k
        return ir_metrics(qrels, {f"q{i}": r for i, r in enumerate(runs)}, (f"ndcg_at_{k}", "mrr"))

    m_og, m_only = metrics(run_og), metrics(run_only)
    pm_inst = mean([pmrr_pair(a, b) for a, b in zip(r_og, r_inst, strict=True)])
    pm_query = mean([pmrr_pair(a, b) for a, b in zip(r_og, r_query, strict=True)])
    return {
        f"ndcg_at_{k}": m_og[f"ndcg_at_{k}"],
        f"mrr_at_{k}": m_og["mrr"],
        f"ndcg_at_{k}_query_only": m_only[f"ndcg_at_{k}"],
        f"mrr_at_{k}_query_only": m_only["mrr"],
        "pmrr_instruction": pm_inst,
        "pmrr_query": pm_query,
        "pmrr": (pm_inst + pm_query) / 2,
        "pmrr_scale": PMRR_SCALE,
        "mean_rank_positive": float(np.mean(r_og)),
    }


def evaluate_release(
    model_path_or_model: Any,
    release_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    max_rows: int | None = None,
    k: int = _K,
    pool_sample: int = DEFAULT_POOL_SAMPLE,
    pool_seed: int = 13,
    collection: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a model on one split of a release.

    Pool (:func:`pipeline.train.pool.build_pool`): the split's P+, HN1 and HN2, its rows' mined
    negatives, and ``pool_sample`` passages drawn with ``pool_seed`` from the rest of the
    collection: every passage of the release (all splits, mined negatives included), or the BEIR
    ``corpus.jsonl`` given as ``collection``. Per row, the relevant document is that row's P+.

    - ``ndcg_at_10`` / ``mrr_at_10``: query text = template(Q+, I+) (pytrec_eval).
    - ``ndcg_at_10_query_only`` / ``mrr_at_10_query_only``: the same with Q+ alone (ablation).
    - ``pmrr_instruction``: FollowIR p-MRR of P+ between og = template(Q+, I+) and changed =
      template(Q+, I-); ``pmrr_query``: og = template(Q+, I+), changed = template(Q-, I+);
      ``pmrr``: their mean. Each is the mean over rows of :func:`pmrr_pair` (one changed document,
      P+, per row, so MTEB's per-query averaging is the identity here). Raw scale, see ``PMRR_SCALE``.
    """
    check_template(template)
    rows = load_release_split(release_dir, split, columns=("mined_negatives",), max_rows=max_rows)
    usable, v = _complete_rows(rows)
    if not usable:
        raise InfirError(f"{release_dir}: split {split!r} has no complete rows to evaluate")
    pool = _release_pool(release_dir, usable, collection, pool_sample, pool_seed)
    index = {t: i for i, t in enumerate(pool.docs)}
    doc_ids = [f"d{i}" for i in range(len(pool.docs))]
    targets = np.array([index[x["document_positive"]] for x in v], dtype=np.int64)
    query_sets = _query_sets(template, v)
    ranked = _rank(_model(model_path_or_model), pool.docs, doc_ids, query_sets, targets, batch_size, k)
    return {
        "split": split,
        "rows": len(v),
        "rows_skipped": len(rows) - len(v),
        "pool_size": len(pool.docs),
        "pool": {
            "split_passages": pool.split_passages,
            "mined_negatives": pool.mined,
            "sampled": pool.sampled,
            "sample_size": pool_sample,
            "seed": pool_seed,
            "collection": pool.collection,
            "collection_rest": pool.collection_rest,
        },
        "template": template,
        **_scores(ranked, doc_ids, targets, k),
    }


# ---------------------------------------------------------------- BEIR


def _instruction(q: dict[str, Any]) -> str:
    inst = q.get("instruction")
    if not inst and isinstance(q.get("metadata"), dict):
        inst = q["metadata"].get("instruction")
    return clean_text(inst)


def doc_text(d: dict[str, Any]) -> str:
    """How a corpus document is encoded: ``title + " " + text`` (either may be empty)."""
    return " ".join(x for x in (clean_text(d.get("title")), clean_text(d.get("text"))) if x)


def evaluate_beir(
    model: Any,
    dataset_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    k: int = _K,
    graded: bool = False,
) -> dict[str, Any]:
    """nDCG@k and MRR@k of any sentence-transformers model on a BEIR-layout dataset.

    ``dataset_dir`` holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
    (``_id``, ``text``, optional ``instruction`` or ``metadata.instruction``) and
    ``qrels/<split>.tsv`` (query-id, corpus-id, score; header optional). Documents are encoded as
    ``title + " " + text``. Queries with no positive judgement are skipped. Two runs: with the
    instruction (template(query, instruction); a query without one is its text alone) and query
    only. Relevance is binary (score > 0) unless ``graded`` (gain = score, as trec_eval).
    """
    check_template(template)
    root = Path(dataset_dir)
    corpus = read_jsonl(root / "corpus.jsonl")
    queries = {str(q["_id"]): q for q in read_jsonl(root / "queries.jsonl")}
    qrels = read_qrels(root / "qrels" / f"{split}.tsv")

    docs: dict[str, str] = {}
    for d in corpus:
        docs.setdefault(str(d["_id"]), doc_text(d))
    if not docs:
        raise InfirError(f"{root / 'corpus.jsonl'}: empty corpus")
    doc_ids = list(docs)

    qids = [q for q in qrels if q in queries and any(s > 0 for s in qrels[q].values())]
    if not qids:
        raise InfirError(f"{root}: no query in qrels/{split}.tsv has a positive judgement and a queries.jsonl entry")
    with_inst = [
        format_query(template, clean_text(queries[q].get("text")), _instruction(queries[q]) or None) for q in qids
    ]
    without = [format_query(template, clean_text(queries[q].get("text")), None) for q in qids]

    st = _model(model)
    d_emb = encode_texts(st, list(docs.values()), batch_size, label="corpus")
    q_emb = encode_texts(st, with_inst + without, batch_size, label="queries")
    n = len(qids)
    judged = {q: {d: (int(g) if graded else 1) for d, g in qrels[q].items() if g > 0} for q in qids}

    def run(qe: np.ndarray) -> dict[str, float]:
        runs, _ = score_runs(qe, d_emb, doc_ids, None, k)
        return ir_metrics(judged, dict(zip(qids, runs, strict=True)), (f"ndcg_at_{k}", "mrr"))

    m_i, m_q = run(q_emb[:n]), run(q_emb[n:])
    return {
        "dataset": str(root),
        "split": split,
        "queries": n,
        "queries_with_instruction": sum(1 for q in qids if _instruction(queries[q])),
        "corpus_size": len(doc_ids),
        "template": template,
        f"ndcg_at_{k}": m_i[f"ndcg_at_{k}"],
        f"mrr_at_{k}": m_i["mrr"],
        f"ndcg_at_{k}_query_only": m_q[f"ndcg_at_{k}"],
        f"mrr_at_{k}_query_only": m_q["mrr"],
    }
