"""Metrics: p-MRR (MTEB's rank_score and calculate_pmrr), nDCG/MRR/MAP via pytrec_eval, ranks with MTEB's tie rule."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pipeline.train.metrics import (
    followir_pmrr,
    ir_metrics,
    mean,
    pmrr_pair,
    qrel_diff,
    rank_in_run,
    rank_in_scores,
    ranks_of_targets,
    run_from_ranking,
)


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


# ---------------------------------------------------------------- nDCG / MRR / MAP via pytrec_eval


def _run(scores: list[float], depth: int | None = None) -> dict[str, float]:
    return run_from_ranking([f"d{i}" for i in range(len(scores))], scores, depth)


def test_ir_metrics_hand_values() -> None:
    # one relevant doc at rank 2 of 3: nDCG@10 = 1/log2(3), RR = 1/2
    r = ir_metrics({"q": {"d1": 1}}, {"q": _run([0.9, 0.5, 0.1])}, ("ndcg_at_10", "mrr"))
    assert r["ndcg_at_10"] == pytest.approx(1 / math.log2(3)) and r["mrr"] == pytest.approx(0.5)
    # two relevant at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2 3); a third relevant doc outside the
    # run still counts in the ideal DCG (trec_eval)
    r = ir_metrics({"q": {"d0": 1, "d2": 1}}, {"q": _run([0.9, 0.5, 0.1])}, ("ndcg_at_10",))
    assert r["ndcg_at_10"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    r = ir_metrics({"q": {"d0": 1, "x": 1, "y": 1}}, {"q": _run([0.9, 0.5])}, ("ndcg_at_10",))
    assert r["ndcg_at_10"] == pytest.approx(1 / (1 + 1 / math.log2(3) + 0.5))
    # graded: gain 1 at rank 1, gain 2 at rank 2; ideal puts 2 first
    r = ir_metrics({"q": {"d0": 1, "d1": 2}}, {"q": _run([0.9, 0.5])}, ("ndcg_at_5",))
    assert r["ndcg_at_5"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    # MAP: relevant at ranks 1 and 3 of 2 relevant -> (1/1 + 2/3) / 2
    r = ir_metrics({"q": {"d0": 1, "d2": 1}}, {"q": _run([0.9, 0.5, 0.1])}, ("map_at_1000",))
    assert r["map_at_1000"] == pytest.approx((1 + 2 / 3) / 2)
    # MRR@k: the run cut at k; relevant at rank 3, cut at 2 -> 0
    assert ir_metrics({"q": {"d2": 1}}, {"q": _run([0.9, 0.5, 0.1], depth=2)}, ("mrr",))["mrr"] == 0.0
    # mean over judged queries; a judged query without a run counts 0; judgement 0 is not relevant
    r = ir_metrics({"a": {"d0": 1}, "b": {"d0": 1}, "c": {"d1": 0}}, {"a": _run([0.9, 0.1])}, ("mrr",))
    assert r["mrr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        ir_metrics({"q": {"d0": 1}}, {"q": _run([1.0])}, ("p_at_3",))


def test_ir_metrics_follow_our_tie_rule() -> None:
    # equal scores: trec_eval alone would order by doc id; the run we hand it keeps pool order
    scores = [0.5, 0.5, 0.5]
    run = _run(scores)
    assert list(run) == ["d0", "d1", "d2"] and run["d0"] > run["d1"] > run["d2"]
    for t in range(3):
        rr = ir_metrics({"q": {f"d{t}": 1}}, {"q": run}, ("mrr",))["mrr"]
        assert rr == pytest.approx(1 / rank_in_scores(scores, t))


def test_ir_metrics_cross_check_on_random_fixture() -> None:
    """pytrec_eval against a direct transcription of the nDCG@10 / RR definitions, 50 random queries."""
    rng = random.Random(5)
    qrels, runs, want_ndcg, want_rr = {}, {}, [], []
    for q in range(50):
        n = rng.randint(3, 30)
        scores = [rng.random() for _ in range(n)]
        rel = {f"d{i}": rng.choice([1, 2]) for i in rng.sample(range(n), rng.randint(1, 3))}
        qrels[f"q{q}"], runs[f"q{q}"] = rel, _run(scores)
        order = sorted(range(n), key=lambda i: -scores[i])
        gains = [rel.get(f"d{i}", 0) for i in order]
        dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains[:10]))
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        want_ndcg.append(dcg / idcg)
        want_rr.append(next(1 / (r + 1) for r, g in enumerate(gains) if g > 0))
    got = ir_metrics(qrels, runs, ("ndcg_at_10", "mrr"))
    assert got["ndcg_at_10"] == pytest.approx(sum(want_ndcg) / 50, abs=1e-9)
    assert got["mrr"] == pytest.approx(sum(want_rr) / 50, abs=1e-9)


# ---------------------------------------------------------------- FollowIR p-MRR (MTEB's calculate_pmrr)


def mteb_calculate_pmrr(original_run, new_run, changed_qrels) -> float:
    # the logic of mteb's calculate_pmrr (pandas groupby replaced by dicts), for cross-checking
    per_q: dict[str, list[float]] = {}
    for qid, docs in changed_qrels.items():
        if qid not in original_run or qid not in new_run:
            continue
        for d in docs:
            og = mteb_get_rank(list(original_run[qid].values()), list(original_run[qid]).index(d)) \
                if d in original_run[qid] else len(original_run[qid]) + 1
            new = mteb_get_rank(list(new_run[qid].values()), list(new_run[qid]).index(d)) \
                if d in new_run[qid] else len(new_run[qid]) + 1
            per_q.setdefault(qid, []).append(mteb_rank_score(og, new))
    return sum(sum(v) / len(v) for v in per_q.values()) / len(per_q)


def test_qrel_diff_and_followir_pmrr_by_hand() -> None:
    qrels_og = {"q1": {"a": 1, "b": 1, "c": 0}, "q2": {"x": 1, "y": 0}, "q3": {"z": 1}}
    qrels_ch = {"q1": {"a": 0, "b": 1, "c": 0}, "q2": {"x": 0, "y": 0}, "q3": {"z": 1}}
    diff = qrel_diff(qrels_og, qrels_ch)
    assert diff == {"q1": ["a"], "q2": ["x"], "q3": []}
    run_og = {"q1": {"a": 0.9, "b": 0.8, "c": 0.1}, "q2": {"x": 0.2, "y": 0.9}, "q3": {"z": 1.0}}
    run_ch = {"q1": {"a": 0.1, "b": 0.8, "c": 0.5}, "q2": {"x": 0.95, "y": 0.9}, "q3": {"z": 1.0}}
    # q1: a from rank 1 to 3 -> 1 - (1/3)/(1/1) = 2/3; q2: x from rank 2 to 1 -> (1/2)/(1/1) - 1 = -1/2
    # q3 has no changed document and is left out: p-MRR = (2/3 - 1/2) / 2 = 1/12
    pmrr, per_q = followir_pmrr(run_og, run_ch, diff)
    assert per_q == pytest.approx({"q1": 2 / 3, "q2": -0.5})
    assert pmrr == pytest.approx(1 / 12)
    assert pmrr == pytest.approx(mteb_calculate_pmrr(run_og, run_ch, {q: d for q, d in diff.items() if d}))
    # a changed document missing from a run ranks len(run) + 1, as in MTEB's get_rank_from_dict
    assert rank_in_run({"a": 0.5, "b": 0.4}, "zz") == 3
    assert rank_in_run({"a": 0.5, "b": 0.5}, "b") == 2  # ties: insertion order


def test_followir_pmrr_matches_mteb_on_random_runs() -> None:
    rng = random.Random(11)
    for _ in range(30):
        run_og, run_ch, diff = {}, {}, {}
        for q in range(rng.randint(1, 6)):
            docs = [f"d{i}" for i in range(rng.randint(2, 9))]
            run_og[f"q{q}"] = {d: rng.choice([0.1, 0.2, 0.3, 0.4]) for d in docs}
            run_ch[f"q{q}"] = {d: rng.choice([0.1, 0.2, 0.3, 0.4]) for d in docs}
            diff[f"q{q}"] = rng.sample(docs, rng.randint(1, len(docs)))
        assert followir_pmrr(run_og, run_ch, diff)[0] == pytest.approx(mteb_calculate_pmrr(run_og, run_ch, diff))


def test_mean() -> None:
    assert mean([]) == 0.0
    assert mean([1, 2, 3]) == 2.0
