"""`infir audit score`: every figure recomputed here by hand from the labels the test wrote."""

from __future__ import annotations

import json
import math

import pytest

from audit_fixtures import make_audit_run
from conftest import run_infir
from pipeline.audit.sample import draw, write_sample
from pipeline.audit.stats import cohen_kappa, weighted_share, wilson

Z = 1.959964
YES = {"p_fits": "yes", "hn1_fits": "yes", "hn2_fits": "yes", "edits_minimal": "yes"}


def test_wilson_and_kappa_against_published_values():
    # Wilson 95% for 0 of 10: [0, 0.2775] (Brown, Cai & DasGupta 2001); 3 of 5: [0.2307, 0.8824]
    assert wilson(0, 10)["high"] == pytest.approx(0.2775, abs=1e-4) and wilson(0, 10)["low"] == 0
    w = wilson(3, 5)
    assert (w["low"], w["high"], w["share"]) == pytest.approx((0.2307, 0.8824, 0.6), abs=1e-4)
    assert wilson(0, 0) == {"valid": 0, "n": 0, "share": None, "low": None, "high": None}
    # Cohen's kappa, the textbook table: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["y", "y"], ["y", "y"]) is None  # undefined: chance agreement is 1


def test_weighted_share_with_the_design_effect():
    values, weights = [True, True, False, True], [2.0, 2.0, 2.0, 6.0]
    p = (2 + 2 + 6) / 12
    deff = 4 * (4 + 4 + 4 + 36) / 12 ** 2
    got = weighted_share(values, weights)
    assert (got["share"], got["low"], got["high"], got["design_effect"], got["effective_n"]) == pytest.approx(
        (p, *_wilson(p, 4 / deff), deff, 4 / deff), abs=1e-6)
    # every row valid: the interval still has a width (the normal approximation's would be 0)
    all_valid = weighted_share([True] * 3, [1.0, 1.0, 4.0])
    assert all_valid["share"] == 1 and all_valid["low"] == pytest.approx(_wilson(1.0, 3 / 1.5)[0], abs=1e-6)
    assert all_valid["low"] < 0.6


def _wilson(p: float, n: float) -> tuple[float, float]:
    """The Wilson score interval, from its textbook form."""
    d = 1 + Z * Z / n
    c = (p + Z * Z / (2 * n)) / d
    h = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _line(rid: str, who: str, valid: bool, **answers) -> str:
    return json.dumps({"row_id": rid, "annotator": who, "answers": {**YES, **answers}, "valid": valid, "note": "",
                       "at": "2026-12-07T10:00:00+00:00"})


@pytest.fixture
def scored(tmp_path):
    run = make_audit_run(tmp_path)
    sample = draw(run, {"accepted": 5, "rejected_judge": 2, "rejected_filter": 2}, seed=3)
    audit = run / "audit" / "hand"
    write_sample(sample, audit / "sample.json")
    by = {s: [r for r in sample["rows"] if r["stratum"] == s] for s in sample["strata"]}
    a, rj, rf = ([r["row_id"] for r in by[s]] for s in ("accepted", "rejected_judge", "rejected_filter"))
    alice = [_line(a[0], "alice", True), _line(a[1], "alice", True), _line(a[2], "alice", True),
             _line(a[3], "alice", True), _line(a[4], "alice", False, p_fits="no"),
             _line(rj[0], "alice", True, p_fits="unsure"), _line(rj[1], "alice", False, p_fits="unsure"),
             _line(rf[0], "alice", True)]
    bob = [_line(a[0], "bob", True), _line(a[1], "bob", False), _line(a[2], "bob", True),
           _line(a[3], "bob", True, p_fits="unsure"), _line(a[4], "bob", False, p_fits="no")]
    (audit / "labels.jsonl").write_text("\n".join(alice) + "\n")
    (audit / "labels-bob.jsonl").write_text("\n".join(bob) + "\n")
    code, _, err = run_infir("audit", "score", str(audit))
    assert code == 0, err
    return json.loads((audit / "audit.json").read_text()), err, sample, (a, rj, rf)


def test_score_figures_by_hand(scored):
    got, out, sample, (a, rj, rf) = scored
    assert (got["sample_size"], got["labelled"], got["annotators"]) == (9, 8, ["alice", "bob"])
    # valid per row: the majority, a tie not valid. Accepted: a0 2/2, a1 1/2 (tie), a2 2/2, a3 2/2, a4 0/2
    assert got["precision"] == pytest.approx({"valid": 3, "n": 5, "share": 0.6, "low": 0.2307, "high": 0.8824}, abs=1e-4)
    assert got["strata"]["rejected_judge"] == pytest.approx(
        {"valid": 1, "n": 2, "share": 0.5, "low": 0.0945, "high": 0.9055}, abs=1e-4)
    assert got["strata"]["rejected_filter"]["valid"] == got["strata"]["rejected_filter"]["n"] == 1
    assert got["strata"]["rejected_first_judge"]["n"] == 0
    # reweighted: accepted 5 labelled of 24 (w 4.8), rejected_judge 2 of 10 (w 5), rejected_filter 1 of 8 (w 8)
    w = [4.8] * 5 + [5.0] * 2 + [8.0]
    v = [1, 0, 1, 1, 0] + [1, 0] + [1]
    p = sum(x * y for x, y in zip(v, w)) / sum(w)
    deff = len(w) * sum(x * x for x in w) / sum(w) ** 2
    r = got["reweighted_valid_share"]
    assert p == pytest.approx(27.4 / 42) and deff == pytest.approx(8 * 229.2 / 42 ** 2)
    assert (r["share"], r["low"], r["high"]) == pytest.approx((p, *_wilson(p, len(w) / deff)), abs=1e-6)
    assert r["population"] == 42 and r["strata"] == ["accepted", "rejected_judge", "rejected_filter"]
    # kappa, alice vs bob on a0..a4. valid: 4 of 5 agree; alice 4 T / 1 F, bob 3 T / 2 F
    pe = (4 * 3 + 1 * 2) / 25
    assert got["kappa"]["valid"] == pytest.approx((0.8 - pe) / (1 - pe), abs=1e-6)
    # p_fits: alice y y y y n, bob y y y unsure n -> 4 of 5 agree, pe = (4*3 + 1*1) / 25
    pe = (4 * 3 + 1 * 1) / 25
    assert got["kappa"]["p_fits"] == pytest.approx((0.8 - pe) / (1 - pe), abs=1e-6)
    assert "hn1_fits" not in got["kappa"]  # both said yes throughout: kappa is undefined
    assert got["disagreements"] == [x for x in a if x in (a[1], a[3])]
    # p_fits against the judge (positive_fits; every accepted row passed it): alice 4 of 5, bob 3 of 4
    # (unsure not counted); the rejected rows' p_fits answers were unsure, the filtered row never judged
    assert got["questions"]["p_fits"] == {"agreement": pytest.approx(7 / 9, abs=1e-6), "n": 9}
    # hn2_fits: every answer yes; the judge says yes unless a mapped check failed
    judge = {r["row_id"]: r["judge"] for r in sample["rows"]}
    mapped = ("hn2_fits", "hn2_fails_positive", "positive_fails_query_negative")
    says = [all(judge[x][c] for c in mapped) for x in a + a + rj]  # alice's and bob's accepted rows, alice's rejected
    assert got["questions"]["hn2_fits"] == {"agreement": pytest.approx(sum(says) / len(says), abs=1e-6), "n": 12}
    assert "judge precision (accepted rows people judge valid): 3/5 = 60.0% (95% CI 23.1% to 88.2%)" in out
    assert "Cohen's kappa between annotators: " in out and "audit.json" in out


def test_score_errors_are_one_line(tmp_path):
    code, _, err = run_infir("audit", "score", "runs/x/audit/none")
    assert code == 2 and "runs/x/audit/none: no such audit folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_infir("audit", "score", "empty")
    assert code == 2 and "no sample.json" in err and "Traceback" not in err
    code, _, err = run_infir("audit", "a", "b", "c")
    assert code == 2 and "expected `infir audit runs/<run>`" in err


def test_three_annotators_mean_pairwise_kappa_and_a_changed_run_is_noted(tmp_path):
    from pipeline.audit.score import score

    run = make_audit_run(tmp_path)
    sample = draw(run, {"accepted": 4}, seed=2)
    audit = run / "audit" / "three"
    write_sample(sample, audit / "sample.json")
    ids = [r["row_id"] for r in sample["rows"]]
    votes = {"ann": [True, True, False, False], "bea": [True, False, False, False], "cy": [True, True, True, False]}
    (audit / "labels.jsonl").write_text("".join(_line(rid, who, v[k]) + "\n" for who, v in votes.items()
                                                for k, rid in enumerate(ids)))
    got, notes = score(audit)
    assert notes == []
    pairs = [("ann", "bea"), ("ann", "cy"), ("bea", "cy")]
    def kappa(a, b):  # noqa: E306
        po = sum(x == y for x, y in zip(a, b)) / 4
        pe = (sum(a) * sum(b) + (4 - sum(a)) * (4 - sum(b))) / 16
        return (po - pe) / (1 - pe)
    assert got["kappa"]["valid"] == pytest.approx(sum(kappa(votes[a], votes[b]) for a, b in pairs) / 3, abs=1e-6)
    # majority of three: rows 0 and 1 valid (3 and 2 votes), 2 and 3 not (1 and 0)
    assert (got["precision"]["valid"], got["precision"]["n"]) == (2, 4)
    assert got["disagreements"] == ids[1:3]
    (run / "verify" / "_SUCCESS.json").write_text('{"stage": "verify", "rebuilt": true}')
    _, notes = score(audit)
    assert notes == [f"{run / 'verify'} changed since the sample was drawn: the figures describe its rows as they were"]
