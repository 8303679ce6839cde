"""Ranking metrics: ranks with MTEB's tie rule, trec_eval measures (pytrec_eval), FollowIR p-MRR.

nDCG, MAP and reciprocal rank come from pytrec_eval (trec_eval's own C code, the library MTEB
uses). p-MRR is ours: no IR library has it outside MTEB, and MTEB is far too heavy a dependency
for one formula; it is written here from MTEB's definition and tested against it.

Tie rule (one rule for every metric here, taken from MTEB): documents are ordered by score,
highest first, with a *stable* sort over the pool order; among equal scores the document that
comes first in the pool ranks higher. So

    rank(d) = 1 + #{docs scored strictly higher than d} + #{docs scored equal to d that precede d in the pool}

This is what MTEB's ``get_rank_from_dict`` (used for p-MRR) and its ``mrr`` do: both call
``sorted(run.items(), key=score, reverse=True)`` and Python's sort stays stable with
``reverse=True``, so equal scores keep the run's insertion order (our pool order).
See embeddings-benchmark/mteb, ``mteb/evaluation/evaluators/retrieval_metrics.py``
(``get_rank_from_dict``, ``calculate_pmrr``, ``rank_score``, ``mrr``).
(pytrec_eval breaks score ties by document id instead; :func:`run_from_ranking` hands it runs
with strictly decreasing scores in our order, so rank, MRR, nDCG and p-MRR all use one rule.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "rank_in_scores",
    "ranks_of_targets",
    "run_from_ranking",
    "ir_metrics",
    "rank_in_run",
    "pmrr_pair",
    "qrel_diff",
    "followir_pmrr",
    "mean",
]


def rank_in_scores(scores: Sequence[float] | np.ndarray, target: int) -> int:
    """1-based rank of ``scores[target]`` under the stable tie rule (earlier pool index wins ties)."""
    s = np.asarray(scores, dtype=np.float64)
    if not 0 <= target < s.shape[0]:
        raise IndexError(f"target {target} outside a pool of {s.shape[0]}")
    t = s[target]
    higher = int(np.count_nonzero(s > t))
    tied_before = int(np.count_nonzero(s[:target] == t))
    return 1 + higher + tied_before


def ranks_of_targets(scores: np.ndarray, targets: Sequence[int] | np.ndarray) -> np.ndarray:
    """Vectorised :func:`rank_in_scores`: row ``i`` of ``scores`` (queries x pool) ranks ``targets[i]``."""
    s = np.asarray(scores)
    tg = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or tg.shape != (s.shape[0],):
        raise ValueError("scores must be (n_queries, n_docs) and targets (n_queries,)")
    t = s[np.arange(s.shape[0]), tg][:, None]
    higher = (s > t).sum(axis=1)
    before = np.arange(s.shape[1])[None, :] < tg[:, None]
    tied_before = ((s == t) & before).sum(axis=1)
    return (1 + higher + tied_before).astype(np.int64)


def run_from_ranking(doc_ids: Sequence[str], scores: Sequence[float] | np.ndarray, depth: int | None = None) -> dict[str, float]:
    """A trec run for one query: the top ``depth`` documents in our tie order, as {doc_id: score}.

    trec_eval (so pytrec_eval) breaks score ties by document id, not by our pool order; the run
    therefore carries strictly decreasing scores (``depth - position``), so the library sees exactly
    our ranking and the metrics agree with :func:`rank_in_scores` and p-MRR.
    """
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")  # stable: equal scores keep pool order
    if depth is not None:
        order = order[:depth]
    n = len(order)
    return {str(doc_ids[i]): float(n - pos) for pos, i in enumerate(order)}


#: Our metric names -> pytrec_eval measure (and the result key it reports).
_TREC = {
    "ndcg_at_5": ("ndcg_cut.5", "ndcg_cut_5"),
    "ndcg_at_10": ("ndcg_cut.10", "ndcg_cut_10"),
    "map_at_1000": ("map_cut.1000", "map_cut_1000"),
    "mrr": ("recip_rank", "recip_rank"),
}


def ir_metrics(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    metrics: Sequence[str] = ("ndcg_at_10", "mrr"),
) -> dict[str, float]:
    """Mean of trec_eval measures (computed by pytrec_eval) over the queries with a relevant document.

    ``metrics`` from ``ndcg_at_5``, ``ndcg_at_10``, ``map_at_1000``, ``mrr`` (reciprocal rank of the
    run as given: pass a run cut at 10 for MRR@10). Relevance is graded as in trec_eval (gain =
    judgement, judgements <= 0 are not relevant). A query with a relevant document but no run counts
    0, as in trec_eval's ``-c``; a query with no relevant document, and a run query with no
    judgement, are left out.
    """
    import pytrec_eval

    unknown = [m for m in metrics if m not in _TREC]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(_TREC)}")
    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    if not judged:
        return {m: 0.0 for m in metrics}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, {_TREC[m][0] for m in metrics})
    per_query = evaluator.evaluate({q: r for q, r in run.items() if q in judged and r})
    return {m: sum(per_query.get(q, {}).get(_TREC[m][1], 0.0) for q in judged) / len(judged) for m in metrics}


def rank_in_run(run: dict[str, float], doc_id: str) -> int:
    """MTEB's ``get_rank_from_dict``: 1-based rank of ``doc_id`` in a run sorted by score (stable
    over the run's insertion order); a document missing from the run ranks ``len(run) + 1``."""
    ordered = sorted(run.items(), key=lambda kv: kv[1], reverse=True)
    for i, (d, _) in enumerate(ordered):
        if d == doc_id:
            return i + 1
    return len(ordered) + 1


def pmrr_pair(rank_og: int, rank_new: int) -> float:
    """FollowIR p-MRR score of one (query, changed document) pair, exactly as MTEB computes it.

    ``rank_og``: the document's rank under the original instruction (where it is relevant);
    ``rank_new``: its rank under the changed instruction (where it is no longer relevant).
    MTEB, ``mteb/evaluation/evaluators/retrieval_metrics.py`` (also ``evaluators/utils.py`` in
    older releases), ``rank_score``::

        if og_rank >= new_rank:
            return ((1 / og_rank) / (1 / new_rank)) - 1
        else:
            return 1 - ((1 / new_rank) / (1 / og_rank))

    Sign: positive when the document drops under the changed instruction (the model followed
    it), negative when it rises, 0 when unchanged. Range (-1, 1). Raw value (MTEB's
    ``calculate_pmrr`` returns the plain mean; it does not multiply by 100).
    """
    og = int(rank_og)
    new = int(rank_new)
    if og < 1 or new < 1:
        raise ValueError("ranks are 1-based")
    if og >= new:
        return ((1 / og) / (1 / new)) - 1
    return 1 - ((1 / new) / (1 / og))


def qrel_diff(qrels_og: dict[str, dict[str, float]], qrels_changed: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """Per query, the documents judged under the original instruction whose judgement differs under
    the changed one (MTEB's ``create_qrel_diff``; a document missing from the changed qrels counts
    as judgement 0)."""
    return {
        q: [d for d, g in docs.items() if qrels_changed.get(q, {}).get(d, 0) != g]
        for q, docs in qrels_og.items()
    }


def followir_pmrr(
    run_og: dict[str, dict[str, float]],
    run_changed: dict[str, dict[str, float]],
    changed_docs: dict[str, list[str]],
) -> tuple[float, dict[str, float]]:
    """FollowIR p-MRR as MTEB's InstructionRetrieval tasks compute it (``calculate_pmrr``).

    For each query and each of its changed documents, :func:`pmrr_pair` of the document's rank in
    the original-instruction run and in the changed-instruction run (:func:`rank_in_run`); the
    mean per query, then the mean over queries. Queries with no changed document, or missing
    from either run, are left out (MTEB skips them). Returns (p-MRR, per-query values).
    """
    per_query: dict[str, float] = {}
    for q, docs in changed_docs.items():
        if not docs or q not in run_og or q not in run_changed:
            continue
        per_query[q] = mean([pmrr_pair(rank_in_run(run_og[q], d), rank_in_run(run_changed[q], d)) for d in docs])
    return mean(list(per_query.values())), per_query


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for an empty sequence."""
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else 0.0
