"""The audit's sample: stratified by what decided each row, seeded, with population / drawn weights."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from audit_fixtures import COUNTS, make_audit_run
from pipeline.audit.command import prepare
from pipeline.audit.sample import draw, parse_per_stratum, quotas
from pipeline.errors import InfirError


def _run_rows(run) -> dict[str, dict]:
    rows = {}
    for p in sorted((run / "verify").glob("part-*.parquet")):
        rows.update({r["id"]: r for r in pq.read_table(p).to_pylist()})
    return rows


def test_sample_is_stratified_weighted_and_true_to_the_run(tmp_path):
    run = make_audit_run(tmp_path)
    sample = draw(run, quotas(16, COUNTS), seed=13)
    # half accepted, the other half evenly over the three rejected strata (8 = 3 + 3 + 2)
    assert {s: v["drawn"] for s, v in sample["strata"].items()} == {
        "accepted": 8, "rejected_judge": 3, "rejected_first_judge": 3, "rejected_filter": 2}
    assert {s: v["population"] for s, v in sample["strata"].items()} == COUNTS  # failed rows in no stratum
    assert sample["strata"]["rejected_judge"]["weight"] == pytest.approx(10 / 3)
    run_rows = _run_rows(run)
    assert len({r["row_id"] for r in sample["rows"]}) == 16
    for r in sample["rows"]:
        src = run_rows[r["row_id"]]
        assert r["weight"] == sample["strata"][r["stratum"]]["weight"]
        assert r["row"]["hn2"] == src["hard_negative_document_2"] and r["row"]["q_minus"] == src["query_negative"]
        expected = ("accepted" if src["accepted"] else
                    {"judge": "rejected_judge", "first_judge": "rejected_first_judge", "filter": "rejected_filter"}[src["decided_by"]])
        assert r["stratum"] == expected and r["judge"]["accepted"] == src["accepted"]
        for v in src["verdicts"]:
            assert r["judge"][v["check"]] == v["passed"]
    # shuffled across strata: the position does not tell the annotator what the judge decided
    assert [r["stratum"] for r in sample["rows"]] != sorted(r["stratum"] for r in sample["rows"])
    assert set(sample["created_from"]) == {"source", "generate", "mine", "filter", "verify"}


def test_sample_is_seeded(tmp_path):
    run = make_audit_run(tmp_path)
    ids = lambda seed: [r["row_id"] for r in draw(run, quotas(16, COUNTS), seed=seed)["rows"]]  # noqa: E731
    assert ids(13) == ids(13)
    assert ids(13) != ids(14)


def test_sizes_per_stratum_and_what_a_small_stratum_cannot_fill():
    assert parse_per_stratum("accepted=5, rejected_filter=2") == {"accepted": 5, "rejected_filter": 2}
    with pytest.raises(InfirError, match="unknown stratum 'rejected'"):
        parse_per_stratum("rejected=3")
    with pytest.raises(InfirError, match="a whole number"):
        parse_per_stratum("accepted=many")
    # a stratum with too few rows gives its share to the others
    assert quotas(10, {"accepted": 2, "rejected_judge": 20}) == {
        "accepted": 2, "rejected_judge": 8, "rejected_first_judge": 0, "rejected_filter": 0}
    assert quotas(6, {"accepted": 100}) == {"accepted": 6, "rejected_judge": 0, "rejected_first_judge": 0, "rejected_filter": 0}


def test_per_stratum_sizes_are_capped_at_the_population(tmp_path):
    run = make_audit_run(tmp_path)
    sample = draw(run, {"accepted": 30, "rejected_filter": 1}, seed=1)
    assert sample["strata"]["accepted"] == {"population": 24, "drawn": 24, "weight": 1.0}
    assert sample["strata"]["rejected_judge"]["drawn"] == 0 and sample["strata"]["rejected_judge"]["weight"] is None


def test_an_existing_sample_is_reused_never_drawn_again(tmp_path):
    run = make_audit_run(tmp_path)
    audit = prepare(run, rows=16, seed=13, name="a1", per_stratum=None)
    first = (audit / "sample.json").read_text()
    (audit / "labels.jsonl").write_text("")
    again = prepare(run, rows=40, seed=99, name="a1", per_stratum=None)
    assert again == audit and (audit / "sample.json").read_text() == first
    assert json.loads(first)["seed"] == 13


def test_sampling_errors_are_one_line(tmp_path):
    with pytest.raises(InfirError, match="no such run directory"):
        prepare(tmp_path / "runs" / "nope", rows=10, seed=1, name=None, per_stratum=None)
    (tmp_path / "runs" / "early" / "mine").mkdir(parents=True)
    with pytest.raises(InfirError, match="verify has not finished"):
        prepare(tmp_path / "runs" / "early", rows=10, seed=1, name=None, per_stratum=None)
    run = make_audit_run(tmp_path)
    with pytest.raises(InfirError, match="--name: .*not a safe name"):
        prepare(run, rows=10, seed=1, name="../x", per_stratum=None)
