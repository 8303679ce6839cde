"""`infir eval --followir`: a hand-written FollowIR-layout fixture, its hand-computed p-MRR, clear errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_infir
from pipeline.errors import InfirError
from pipeline.train import evaluate_followir


class BowModel:
    """Bag of words over salmon/grill/steam/tofu, L2-normalised (sentence-transformers style encode)."""

    VOCAB = ("salmon", "grill", "steam", "tofu")

    def encode(self, texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False):
        out = np.zeros((len(texts), len(self.VOCAB)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                if w in self.VOCAB:
                    out[i, self.VOCAB.index(w)] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_fixture(root: Path, qrels_ext: str = "jsonl") -> Path:
    """The layout of the public FollowIR release (jhu-clsp/robust04-instructions and siblings)."""
    _jsonl(root / "corpus.jsonl", [
        {"_id": "d1", "title": "", "text": "salmon grill"},
        {"_id": "d2", "title": "Salmon", "text": "steam"},
        {"_id": "d3", "title": "", "text": "tofu grill"},
    ])
    _jsonl(root / "queries.jsonl", [
        {"_id": "q1", "text": "salmon", "instruction_og": "grill", "instruction_changed": "steam",
         "keywords": "salmon", "short_query": "salmon"},
        {"_id": "q2", "text": "tofu", "instruction_og": "grill", "instruction_changed": "steam",
         "keywords": "tofu", "short_query": "tofu"},
    ])
    og = [("q1", "d1", 1), ("q1", "d2", 0), ("q1", "d3", 1), ("q2", "d3", 1)]
    changed = [("q1", "d1", 0), ("q1", "d2", 0), ("q1", "d3", 1), ("q2", "d3", 0)]
    for name, rows in (("qrels_og", og), ("qrels_changed", changed)):
        if qrels_ext == "jsonl":
            _jsonl(root / name / "test.jsonl", [{"query-id": q, "corpus-id": d, "score": s} for q, d, s in rows])
        else:
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / "test.tsv").write_text(
                "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows))
    _jsonl(root / "top_ranked.jsonl", [{"qid": "q1", "pid": d} for d in ("d1", "d2", "d3")]
           + [{"qid": "q2", "pid": d} for d in ("d3", "d1", "d2")])
    return root


@pytest.mark.parametrize("ext", ["jsonl", "tsv"])
def test_followir_fixture_hand_computed(tmp_path, ext):
    root = write_fixture(tmp_path / "task", ext)
    r = evaluate_followir(BowModel(), root)
    # Cosines (bag of words): q1 og "salmon grill": d1 1.0, d2 0.5, d3 0.5 -> d1 1, d2 2, d3 3 (tie: candidate order)
    #                         q1 changed "salmon steam": d1 0.5, d2 1.0, d3 0.0 -> d1 rank 2
    #                         q2 og "tofu grill": d3 1.0 -> rank 1; changed "tofu steam": d3 0.5, d1 0.0, d2 0.5
    #                         -> d3 rank 1 (ties d2 and comes first among the candidates)
    # Changed judgements: q1 d1 (1 -> 0), q2 d3 (1 -> 0).
    # p-MRR: q1 d1 1 -> 2: 1 - (1/2)/(1/1) = 0.5; q2 d3 1 -> 1: 0; mean over queries = 0.25
    assert r["pmrr"] == pytest.approx(0.25)
    assert r["pmrr_per_query"] == pytest.approx({"q1": 0.5, "q2": 0.0})
    assert r["queries"] == 2 and r["changed_docs"] == 2 and r["candidates"] == 6
    # Original run against qrels_og: q1 relevant d1 (rank 1), d3 (rank 3); q2 d3 (rank 1)
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert r["ndcg_at_5"] == pytest.approx((ndcg_q1 + 1) / 2)
    assert r["map_at_1000"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_followir_model_that_ignores_instructions_scores_zero(tmp_path):
    class QueryOnly(BowModel):
        def encode(self, texts, **kw):
            return super().encode([t.split()[0] for t in texts], **kw)  # the query word only

    r = evaluate_followir(QueryOnly(), write_fixture(tmp_path / "task"))
    assert r["pmrr"] == 0.0  # same ranking under both instructions


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code != 0 and "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_followir_cli_errors_are_one_line(tmp_path):
    root = write_fixture(tmp_path / "task")
    (root / "top_ranked.jsonl").unlink()
    line = _one_error_line(*run_infir("eval", "--followir", str(root), "--out", str(tmp_path / "rep")))
    assert "top_ranked.jsonl: file not found" in line

    root = write_fixture(tmp_path / "task2")
    (root / "qrels_changed" / "test.jsonl").unlink()
    line = _one_error_line(*run_infir("eval", "--followir", str(root)))
    assert "qrels_changed" in line and "file not found" in line

    root = write_fixture(tmp_path / "task3")
    rows = [json.loads(x) for x in (root / "queries.jsonl").read_text().splitlines()]
    del rows[1]["instruction_changed"]
    _jsonl(root / "queries.jsonl", rows)
    line = _one_error_line(*run_infir("eval", "--followir", str(root)))
    assert "queries.jsonl: query 'q2' has no 'instruction_changed'" in line
    assert not (tmp_path / "rep").exists()


def test_followir_bad_reference_is_infir_error(tmp_path):
    root = write_fixture(tmp_path / "task")
    _jsonl(root / "top_ranked.jsonl", [{"qid": "q1", "pid": "d9"}, {"qid": "q2", "pid": "d3"}])
    with pytest.raises(InfirError, match="'d9', which is not in corpus.jsonl"):
        evaluate_followir(BowModel(), root)
    _jsonl(root / "top_ranked.jsonl", [{"qid": "q1", "pid": "d1"}])
    with pytest.raises(InfirError, match="query 'q2' has no candidates"):
        evaluate_followir(BowModel(), root)


def test_eval_cli_followir_writes_json_and_markdown(tmp_path):
    root = write_fixture(tmp_path / "task")
    code, out, err = run_infir("eval", "--followir", str(root), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    printed = json.loads(out)
    saved = json.loads((tmp_path / "rep" / "eval-followir.json").read_text())
    assert printed == saved and -1.0 <= saved["pmrr"] <= 1.0 and saved["queries"] == 2
    md = (tmp_path / "rep" / "eval-followir.md").read_text()
    assert f"| pmrr | {saved['pmrr']:.4f} |" in md and "| ndcg_at_5 |" in md
