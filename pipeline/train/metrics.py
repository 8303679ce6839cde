"""Pure ranking metrics: ranks with MTEB's tie rule, MRR@k, nDCG@k, FollowIR p-MRR.

Tie rule (one rule for every metric here, taken from MTEB): documents are ordered by score,
highest first, with a *stable* sort over the pool order; among equal scores the document that
comes first in the pool ranks higher. So

    rank(d) = 1 + #{docs scored strictly higher than d} + #{docs scored equal to d that precede d in the pool}

This is what MTEB's ``get_rank_from_dict`` (used for p-MRR) and its ``mrr`` do: both call
``sorted(run.items(), key=score, reverse=True)`` and Python's sort stays stable with
``reverse=True``, so equal scores keep the run's insertion order (our pool order).
See embeddings-benchmark/mteb, ``mteb/evaluation/evaluators/retrieval_metrics.py``
(``get_rank_from_dict``, ``calculate_pmrr``, ``rank_score``, ``mrr``).
(MTEB's nDCG goes through pytrec_eval, which breaks score ties by document id instead; with
float embeddings ties only come from identical texts, which the pool removes, so the two agree
in practice. We use the stable rule everywhere so that rank, MRR, nDCG and p-MRR agree.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "rank_in_scores",
    "ranks_of_targets",
    "mrr_at_k",
    "ndcg_at_k",
    "pmrr_pair",
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


def mrr_at_k(relevant_ranks: Sequence[int], k: int = 10) -> float:
    """Reciprocal rank of the best-ranked relevant document if it is within the top ``k``, else 0.

    ``relevant_ranks`` holds the 1-based ranks of one query's relevant documents (any order; empty
    means no relevant document was retrieved -> 0.0).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    ranks = [int(r) for r in relevant_ranks]
    if any(r < 1 for r in ranks):
        raise ValueError("ranks are 1-based")
    best = min(ranks, default=None)
    if best is None or best > k:
        return 0.0
    return 1.0 / best


def ndcg_at_k(
    relevant_ranks: Sequence[int],
    k: int = 10,
    n_relevant: int | None = None,
    gains: Sequence[float] | None = None,
    ideal_gains: Sequence[float] | None = None,
) -> float:
    """nDCG@k of one query, trec_eval style: DCG = sum gain / log2(rank + 1) over ranks <= k.

    Binary relevance by default: ``relevant_ranks`` are the 1-based ranks of the query's relevant
    documents (gain 1 each) and ``n_relevant`` (default: ``len(relevant_ranks)``) is how many
    relevant documents exist, for the ideal DCG (a relevant document missing from the pool still
    counts there, as in trec_eval). Graded relevance: ``gains`` parallel to ``relevant_ranks`` and
    ``ideal_gains`` the gains of every relevant document (default: ``gains``).
    Returns 0.0 when there is no relevant document.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    ranks = [int(r) for r in relevant_ranks]
    if any(r < 1 for r in ranks):
        raise ValueError("ranks are 1-based")
    if gains is None:
        g = [1.0] * len(ranks)
        n_rel = len(ranks) if n_relevant is None else int(n_relevant)
        if n_rel < len(ranks):
            raise ValueError("n_relevant is smaller than the number of relevant ranks")
        ideal = [1.0] * n_rel
    else:
        g = [float(x) for x in gains]
        if len(g) != len(ranks):
            raise ValueError("gains must be parallel to relevant_ranks")
        ideal = [float(x) for x in (g if ideal_gains is None else ideal_gains)]
    dcg = sum(gi / math.log2(r + 1) for r, gi in zip(ranks, g, strict=True) if r <= k)
    ideal = sorted(ideal, reverse=True)[:k]
    idcg = sum(gi / math.log2(i + 2) for i, gi in enumerate(ideal))
    if idcg <= 0:
        return 0.0
    return dcg / idcg


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


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for an empty sequence."""
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else 0.0
