"""The report's measures against independent computations on a small hand-made run directory."""

from __future__ import annotations

import json
import re
from itertools import product
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import measures as m
from conftest import run_infir

P = [
    "The Danube flows through Vienna and Budapest before it reaches the Black Sea in Romania.",
    "Copper wire conducts electricity well because its free electrons move easily at room temperature.",
    "Sourdough bread rises slowly as wild yeast and lactic bacteria ferment the flour overnight.",
    "The violin has four strings tuned in fifths and is played with a bow made of horsehair.",
    "Glaciers carve valleys into a U shape as the moving ice grinds the rock beneath it.",
]
ROWS = [
    # (Q+, I+, I-, Q-, HN1, HN2, status, failed_checks, error)
    ("danube river cities", "Only passages naming Vienna count.", "Only passages naming Prague count.",
     "rhine river cities", P[1], P[2], "accepted", [], None),
    ("copper conductivity", "The answer must say free electrons move easily at room temperature.",
     "The answer must mention protons.", "copper colour", P[0], "Copper is reddish.", "rejected", ["hn2_fits"], None),
    ("sourdough rising", "Focus on wild yeast.", "Focus on baking soda.", "sourdough taste", P[3], P[4],
     "rejected", ["hn1_fits", "hn2_fits"], None),
    ("violin strings", "Focus on wild yeast.", "Focus on tame yeast only.", "cello strings", P[4], P[0],
     "rejected", ["prefilter_instruction_copies_passage"], None),
    ("glacier valleys", "Mention the U shape of the valley.", "Mention the V shape of the valley.",
     "river valleys", P[2], P[3], "failed", [], "judge: invalid answer"),
]


def _usage(tokens: int) -> dict:
    return {"prompt_tokens": tokens, "completion_tokens": tokens // 10, "cost_usd": tokens * 1e-6}


def make_run(root: Path, filter_stage: bool = False) -> Path:
    """A run directory as the stages write it; `filter_stage`: with a `filter` stage (issue 14) whose
    rows carry `failed_filters`, which verify's `failed_checks` then repeats."""
    run = root / "runs" / "fixture"
    rows = []
    for k, (q, ip, ineg, qn, h1, h2, status, failed, err) in enumerate(ROWS):
        rows.append({
            "id": f"r{k}", "query_id": f"q{k}", "passage_id": f"p{k}", "instruction_kind": "constraint" if k % 2 else "aspect",
            "query_positive": q, "instruction_positive": ip, "document_positive": P[k], "instruction_negative": ineg,
            "hard_negative_document_1": h1, "query_negative": qn, "hard_negative_document_2": h2,
            "generate_error": None, "mine_error": None, "verify_error": err,
            "accepted": status == "accepted", "failed_checks": failed,
            "verdicts": [{"check": c, "passed": False, "reason": f"{c} does not hold"} for c in failed if not c.startswith("prefilter_")],
            "mined_negatives": [{"passage_id": "x", "text": P[(k + 1) % 5], "score": 1.0, "rank": 1, "method": "bm25"}],
            "usage_generate": _usage(1000), "usage_mine": _usage(2000), "usage_verify": None if failed and failed[0].startswith("prefilter_") else _usage(3000),
        })
        if filter_stage:
            named = ["query_negative_not_minimal"] if failed and failed[0].startswith("prefilter_") else []
            rows[-1]["failed_filters"] = named
            rows[-1]["failed_checks"] = named + [c for c in failed if not c.startswith("prefilter_")]
    stages = ("source", "generate", "mine") + (("filter",) if filter_stage else ()) + ("verify",)
    for stage, n in ((s, 5) for s in stages):
        (run / stage).mkdir(parents=True)
        (run / stage / "_SUCCESS.json").write_text(json.dumps({"stage": stage, "rows": n, "shards": [], "summary": {}}))
    pq.write_table(pa.Table.from_pylist(rows), run / "verify" / "part-00000.parquet")
    return run


@pytest.fixture
def fixture_report(tmp_path) -> dict:
    run = make_run(tmp_path)
    code, _, err = run_infir("report", str(run), "--no-hardness")
    assert code == 0, err
    return json.loads((run / "report.json").read_text())


def _words(t: str) -> list[str]:
    return re.findall(r"\w+", t.lower())


def _levenshtein(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return d[-1]


def test_distinct_n_matches(fixture_report):
    for n in (1, 2):
        grams = [tuple(w[i:i + n]) for w in (_words(r[1]) for r in ROWS) for i in range(len(w) - n + 1)]
        assert fixture_report["quality"]["diversity"][f"distinct_{n}"] == round(len(set(grams)) / len(grams), 4)


def test_edit_size_matches(fixture_report):
    dist = [_levenshtein(_words(r[1]), _words(r[2])) for r in ROWS]
    got = fixture_report["quality"]["edit_size"]["instruction"]
    assert got["words_changed"]["mean"] == round(sum(dist) / len(dist), 4)
    assert got["words_changed"]["max"] == max(dist) and got["unchanged_rows"] == 0
    qdist = [_levenshtein(_words(r[0]), _words(r[3])) for r in ROWS]
    assert fixture_report["quality"]["edit_size"]["query"]["words_changed"]["mean"] == round(sum(qdist) / 5, 4)


def test_leakage_matches(fixture_report):
    n = fixture_report["quality"]["leakage"]["n"]

    def leaks(i: str, p: str) -> bool:  # brute force: any shared n-gram of words
        wi, wp = _words(i), _words(p)
        return any(wi[a:a + n] == wp[b:b + n] for a, b in product(range(len(wi) - n + 1), range(len(wp) - n + 1)))

    expected = sum(leaks(r[1], P[k]) for k, r in enumerate(ROWS))
    assert expected == 1  # row 1 quotes its passage
    assert fixture_report["quality"]["leakage"]["rows_leaking"] == expected


def test_funnel_kinds_near_duplicates_and_cost(fixture_report):
    f = fixture_report["funnel"]
    assert f["status"] == {"accepted": 1, "rejected": 3, "failed": 1, "pending": 0}
    assert {x["filter"]: x["rejected"] for x in f["filters"]} == {"prefilter_instruction_copies_passage": 1}
    checks = {c["check"]: c["failed"] for c in f["checks"]}
    assert checks["hn2_fits"] == 2 and checks["hn1_fits"] == 1 and checks["positive_fits"] == 0
    assert f["failures"] == [{"stage": "verify", "kind": "judge", "rows": 1}]
    assert [s["rows"] for s in f["steps"]] == [5, 5, 5, 4, 3, 1]
    d = fixture_report["quality"]["diversity"]
    assert {k["value"]: k["rows"] for k in d["kinds"]} == {"aspect": 3, "constraint": 2}
    assert d["near_duplicates"]["rows_with_near_duplicate"] == 2  # rows 2 and 3 share I+
    c = fixture_report["cost"]
    assert c["total"]["calls"] == 5 + 5 + 4
    assert c["total"]["cost_usd"] == pytest.approx(5 * 0.001 + 5 * 0.002 + 4 * 0.003)
    assert c["per_accepted_row"]["cost_usd"] == pytest.approx(c["total"]["cost_usd"])
    assert c["total"]["reasoning_tokens"] is None  # not recorded in these rows


def test_near_duplicates_finds_templates_not_strangers():
    base = "I only want results that specifically mention {w}; anything else is not relevant to me."
    texts = [base.format(w=w) for w in ("typically", "usually", "roughly")] + [
        "Focus on passages about glaciers in the Alps.", "Describe violin bows made of horsehair only."]
    got = m.near_duplicates(texts, threshold=0.7)
    assert got["rows_with_near_duplicate"] == 3 and got["groups"] == 1
    assert m.near_duplicates(texts, threshold=0.99)["rows_with_near_duplicate"] == 0


def test_hardness_matches_direct_cosines(tmp_path):
    """easy / HN-above-P+ shares against cosines computed directly with the same bundled model."""
    import numpy as np

    from pipeline.report.build import ReportOptions, build
    from pipeline.report.hardness import load_model

    model = load_model()
    run = make_run(tmp_path)
    report, _ = build(run, ReportOptions(browse_rows=10), model=model)
    h = report["hardness"]
    easy = hn1 = 0
    for k, r in enumerate(ROWS):
        q, p, a, b = model.encode([f"{r[0]} {r[1]}", P[k], r[4], r[5]], normalize_embeddings=True)
        easy += bool(np.dot(q, p) > np.dot(q, a) and np.dot(q, p) > np.dot(q, b))
        hn1 += bool(np.dot(q, a) > np.dot(q, p))
    assert h["rows"] == 5 and not h["sampled"]
    assert h["easy_share"] == round(easy / 5, 4)
    assert h["hn1_outscores_positive_share"] == round(hn1 / 5, 4)
    # The time budget stops after whole chunks, at least one: a seeded prefix, and the figures say so.
    from pipeline.report.hardness import CHUNK_ROWS, hardness

    many = [{"query_positive": r[0], "instruction_positive": r[1], "document_positive": P[k % 5],
             "hard_negative_document_1": r[4], "hard_negative_document_2": r[5], "pos": k}
            for k, r in enumerate(ROWS * 12)]
    cut = hardness(many, {}, total_rows=len(many), model=model, budget_s=1e-9)
    assert cut["rows"] == CHUNK_ROWS < len(many) and cut["sampled"] and cut["stopped_by_time_budget"]


def test_compare_two_runs_side_by_side(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    # b: the third row's I- rewritten entirely (a bigger edit), and the failed row now accepted.
    t = pq.read_table(b / "verify" / "part-00000.parquet").to_pylist()
    t[2]["instruction_negative"] = "Completely different words appear here now instead."
    t[4].update(verify_error=None, accepted=True)
    pq.write_table(pa.Table.from_pylist(t), b / "verify" / "part-00000.parquet")
    out = tmp_path / "cmp.html"
    code, _, err = run_infir("report", str(a), str(b), "--no-hardness", "--out", str(out))
    assert code == 0, err
    deltas = {(d["section"], d["figure"]): d for d in json.loads(out.with_suffix(".json").read_text())["deltas"]}
    assert deltas[("funnel", "accepted rows")] == {"section": "funnel", "figure": "accepted rows", "a": 1, "b": 2, "delta": 1}
    assert deltas[("funnel", "failed rows")]["delta"] == -1
    edit = deltas[("edit size", "words changed I- vs I+, mean")]
    assert edit["delta"] > 0 and edit["b"] == round(edit["a"] + edit["delta"], 6)
    html = out.read_text()
    assert "fixture" in html and "delta (b − a)" in html


def test_filter_stage_shows_in_the_funnel(tmp_path):
    run = make_run(tmp_path, filter_stage=True)
    code, _, err = run_infir("report", str(run), "--no-hardness")
    assert code == 0, err
    f = json.loads((run / "report.json").read_text())["funnel"]
    assert [s["step"] for s in f["steps"]][3] == "passed filters (filter stage)"
    assert [s["rows"] for s in f["steps"]] == [5, 5, 5, 4, 3, 1]
    assert f["filters"] == [{"filter": "query_negative_not_minimal", "rejected": 1, "pct_of_candidates": 20.0}]
    assert "query_negative_not_minimal" not in {c["check"] for c in f["checks"]}
    assert json.loads((run / "report.json").read_text())["stages"] == ["source", "generate", "mine", "filter", "verify"]
