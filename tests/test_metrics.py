"""Pure metric functions: p-MRR (MTEB's rank_score), MRR@k, nDCG@k, ranks with MTEB's tie rule."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pipeline.train.metrics import mean, mrr_at_k, ndcg_at_k, pmrr_pair, rank_in_scores, ranks_of_targets


def mteb_rank_score(og_rank: int, new_rank: int) -> float:
    # verbatim logic of mteb retrieval_metrics.rank_score, for cross-checking
    if og_rank >= new_rank:
        return ((1 / og_rank) / (1 / new_rank)) - 1
    return 1 - ((1 / new_rank) / (1 / og_rank))


def mteb_get_rank(scores: list[float], doc: int) -> int:
    # mteb retrieval_metrics.get_rank_from_dict over a run dict in pool order
    run = {f"d{i}": s for i, s in enumerate(scores)}
    ordered = sorted(run.items(), key=lambda x: x[1], reverse=True)
    for i, (doc_id, _) in enumerate(ordered):
        if doc_id == f"d{doc}":
            return i + 1
    raise AssertionError


# ---------------------------------------------------------------- p-MRR


@pytest.mark.parametrize(
    ("og", "new", "expected"),
    [
        (1, 1, 0.0),  # no change
        (7, 7, 0.0),
        (1, 4, 0.75),  # doc dropped under the changed instruction: improvement, positive
        (2, 10, 0.8),
        (3, 6, 0.5),
        (4, 1, -0.75),  # doc rose although no longer relevant: degradation, negative
        (10, 2, -0.8),
        (6, 3, -0.5),
        (1, 1000, 0.999),
    ],
)
def test_pmrr_pair_hand_values(og: int, new: int, expected: float) -> None:
    assert pmrr_pair(og, new) == pytest.approx(expected)
    assert pmrr_pair(og, new) == pytest.approx(mteb_rank_score(og, new))


def test_pmrr_sign_convention_and_antisymmetry() -> None:
    for og in range(1, 15):
        for new in range(1, 15):
            v = pmrr_pair(og, new)
            assert -1 < v < 1
            assert v == pytest.approx(-pmrr_pair(new, og))
            if new > og:
                assert v > 0
            elif new < og:
                assert v < 0
            else:
                assert v == 0


def test_pmrr_rejects_zero_rank() -> None:
    with pytest.raises(ValueError):
        pmrr_pair(0, 3)


def test_pmrr_with_ties_uses_mteb_stable_order() -> None:
    # og run: target (index 2) tied with index 0 which precedes it, below index 1 -> rank 3
    og_scores = [0.5, 0.7, 0.5]
    # changed run: target tied with index 1 which precedes it -> rank 2
    new_scores = [0.2, 0.7, 0.7]
    r_og = rank_in_scores(og_scores, 2)
    r_new = rank_in_scores(new_scores, 2)
    assert (r_og, r_new) == (3, 2)
    assert (r_og, r_new) == (mteb_get_rank(og_scores, 2), mteb_get_rank(new_scores, 2))
    assert pmrr_pair(r_og, r_new) == pytest.approx(-1 / 3)  # (1/3)/(1/2) - 1
    # an all-tied pool ranks by pool position, so unchanged scores give p-MRR 0
    flat = [0.3, 0.3, 0.3, 0.3]
    assert [rank_in_scores(flat, i) for i in range(4)] == [1, 2, 3, 4]
    assert pmrr_pair(rank_in_scores(flat, 3), rank_in_scores(flat, 3)) == 0.0


def test_rank_matches_mteb_get_rank_on_random_tied_scores() -> None:
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(1, 12)
        scores = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(n)]
        t = rng.randrange(n)
        assert rank_in_scores(scores, t) == mteb_get_rank(scores, t)


def test_ranks_of_targets_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(30, 9)).astype(np.float32)
    targets = rng.integers(0, 9, size=30)
    got = ranks_of_targets(scores, targets)
    want = [rank_in_scores(scores[i], int(targets[i])) for i in range(30)]
    assert got.tolist() == want


# ---------------------------------------------------------------- MRR / nDCG


def test_mrr_hand_values() -> None:
    assert mrr_at_k([1]) == 1.0
    assert mrr_at_k([3]) == pytest.approx(1 / 3)
    assert mrr_at_k([10], 10) == pytest.approx(0.1)
    assert mrr_at_k([11], 10) == 0.0
    assert mrr_at_k([4, 2]) == 0.5  # best-ranked relevant document counts
    assert mrr_at_k([]) == 0.0
    assert mrr_at_k([2], k=1) == 0.0
    # tie: two docs scored 0.5, the relevant one second in the pool -> rank 2
    assert mrr_at_k([rank_in_scores([0.5, 0.5], 1)]) == 0.5
    assert mrr_at_k([rank_in_scores([0.5, 0.5], 0)]) == 1.0


def test_ndcg_hand_values() -> None:
    assert ndcg_at_k([1]) == 1.0
    assert ndcg_at_k([2]) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg_at_k([3]) == pytest.approx(0.5)
    assert ndcg_at_k([11], 10) == 0.0
    assert ndcg_at_k([]) == 0.0
    # two relevant at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2 3)
    assert ndcg_at_k([1, 3]) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))  # 0.9197
    # three relevant exist, one retrieved at rank 1
    assert ndcg_at_k([1], n_relevant=3) == pytest.approx(1 / (1 + 1 / math.log2(3) + 0.5))
    # graded: gains 1 at rank 1, 2 at rank 2; ideal puts 2 first
    g = ndcg_at_k([1, 2], gains=[1, 2])
    assert g == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    with pytest.raises(ValueError):
        ndcg_at_k([0])
    with pytest.raises(ValueError):
        ndcg_at_k([1, 2], n_relevant=1)


def test_mean() -> None:
    assert mean([]) == 0.0
    assert mean([1, 2, 3]) == 2.0
