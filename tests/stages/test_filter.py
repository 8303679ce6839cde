"""The `filter` stage: every deterministic check by name, before any judge request is paid."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import make_config, run_infir
from openai_server import FakeOpenAIServer, data_block
from pipeline.generation.filters import edit_words, longest_shared_run, run_filters
from pipeline.generation.models import CHECKS
from pipeline.generation.settings import FilterSettings
from stage_helpers import run_until

S = FilterSettings()
P = ("The Eiffel Tower in Paris was completed in 1889 for the World's Fair and stands about 330 metres tall, "
     "built from wrought iron by the company of Gustave Eiffel.")


def good_row(**over) -> dict:
    row = {
        "query_positive": "how tall is the eiffel tower",
        "instruction_positive": "I want the height of the tower itself, stated in metres.",
        "document_positive": P,
        "instruction_negative": "I want the height of the tower itself, stated in feet.",
        "hard_negative_document_1": ("The Eiffel Tower is 1,083 feet tall, a figure American guides quote, "
                                     "and it was painted again in 2019 for the anniversary of its opening."),
        "query_negative": "how tall is the blackpool tower",
        "hard_negative_document_2": ("Blackpool Tower opened in 1894 and rises 158 metres above the promenade, "
                                     "a seaside copy of the Paris landmark built in steel."),
        "hn1_passage_id": None,
        "hn2_passage_id": None,
    }
    row.update(over)
    return row


def test_a_clean_row_passes():
    assert run_filters(good_row(), S) == []


@pytest.mark.parametrize(
    "over,name",
    [
        ({"instruction_negative": " "}, "empty_instruction_negative"),
        ({"instruction_negative": "I want the height of the tower itself, stated in metres!"},
         "instruction_negative_equals_positive"),
        ({"query_negative": "How tall is the Eiffel tower?"}, "query_negative_equals_positive"),
        ({"instruction_negative": "Recipes for a lemon tart with a crisp base and very little sugar in it."},
         "instruction_negative_not_minimal"),
        ({"query_negative": "best pizza dough recipe without yeast for beginners"}, "query_negative_not_minimal"),
        ({"hard_negative_document_1": P.replace("1889", "1890")}, "hard_negative_document_1_copies_positive"),
        ({"hard_negative_document_2": "Tall."}, "hard_negative_document_2_length_ratio"),
        ({"hard_negative_document_2": good_row()["hard_negative_document_1"]}, "hard_negatives_duplicate"),
        ({"instruction_positive": "Only passages saying it was completed in 1889 for the World's Fair and stands about 330 metres"},
         "instruction_leaks_passage"),
        ({"instruction_negative": "I cannot help with that request about the tower, stated in feet."},
         "refusal_instruction_negative"),
        ({"query_negative": '{"query_negative": "how tall is the blackpool tower"}'}, "json_fragment_query_negative"),
        ({"instruction_negative": "I want the height of the {query} itself, stated in feet."},
         "template_leftover_instruction_negative"),
        ({"query_negative": "how tall is the blackpool\x00 tower"}, "non_text_characters_query_negative"),
        ({"hard_negative_document_1": "word " * 500}, "too_long_hard_negative_document_1"),
    ],
)
def test_each_filter_rejects_by_its_own_name(over, name):
    assert name in run_filters(good_row(**over), S)


def test_corpus_negatives_are_not_checked_for_model_leftovers_and_filters_can_be_switched_off():
    corpus_text = good_row()["hard_negative_document_1"] + ' {"id": 3}'
    assert "json_fragment_hard_negative_document_1" in run_filters(good_row(hard_negative_document_1=corpus_text), S)
    assert run_filters(good_row(hard_negative_document_1=corpus_text, hn1_passage_id="p9"), S) == []
    off = S.model_copy(update={"disabled": ["hard_negatives_duplicate"]})
    same = good_row(hard_negative_document_2=good_row()["hard_negative_document_1"])
    assert "hard_negatives_duplicate" not in run_filters(same, off)


def test_edit_measures():
    assert edit_words("how tall is the eiffel tower", "how tall is the blackpool tower") == 1
    assert edit_words("a b c", "a c") == 1
    assert longest_shared_run("x the quick brown fox y", "a quick brown fox jumps") == 3


# ---- through the pipeline ----------------------------------------------------------------------

UNRELATED = "UNRELATED"


def responder(body):
    name = body["response_format"]["json_schema"]["name"]
    user = body["messages"][1]["content"]
    if name == "GeneratedInstruction":
        q = data_block(user, "query")
        return json.dumps({"instruction": f"Only results about the history of {q}.", "kind": "aspect"})
    if name == "PoisonedPair":
        q = data_block(user, "query")
        unrelated = len(q) % 2 == 0  # about half the rows get texts unrelated to Q+ and I+
        passage = f"A passage on {q} and what comes next for it, told at some length for the reader. " * 3
        return json.dumps({
            "instruction_negative": "Recipes for lemon tart with a crisp base, nothing else at all please" if unrelated
            else f"Only results about the future of {q}.",
            "hard_negative_document_1": passage,
            "query_negative": f"{UNRELATED} best pizza dough without yeast for complete beginners at home" if unrelated
            else f"{q} abroad",
            "hard_negative_document_2": f"Travel notes: {q} abroad, with prices, opening hours and a short history "
                                        "of how visitors from other countries first came to see it. " * 2,
        })
    if name == "JudgeVerdicts":
        return json.dumps({c: {"passed": True, "reason": "fine"} for c in CHECKS})
    raise AssertionError(name)


def test_unrelated_negatives_are_rejected_before_any_judge_request(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-filter")
    with FakeOpenAIServer(responder=responder) as srv:
        cfg = make_config(**{"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.concurrency": 8,
                             "source.sample_queries": 20})
        results = run_until(cfg, "verify")
        judged = [r for r in srv.chat_requests() if r.body["response_format"]["json_schema"]["name"] == "JudgeVerdicts"]
    rows = pq.read_table(tmp_path / "runs/sample/filter/part-00000.parquet").to_pylist()
    bad = {r["id"] for r in rows if r["query_negative"].startswith(UNRELATED)}
    assert bad and len(bad) < len(rows)
    for r in rows:
        if r["id"] in bad:
            assert {"query_negative_not_minimal", "instruction_negative_not_minimal"} <= set(r["failed_filters"])
    judged_queries = {data_block(r.body["messages"][1]["content"], "Q-") for r in judged}
    assert not [q for q in judged_queries if q.startswith(UNRELATED)]  # 0 judge requests for them
    assert len(judged) == len(rows) - len(bad)
    verify = {r["id"]: r for r in pq.read_table(tmp_path / "runs/sample/verify/part-00000.parquet").to_pylist()}
    assert all(not verify[i]["accepted"] and "query_negative_not_minimal" in verify[i]["failed_checks"] for i in bad)
    summary = results[-2].success["summary"]  # the filter stage, just before verify
    assert summary["rejected"] == len(bad) and summary["failed_filters"]["query_negative_not_minimal"] == len(bad)
    rc, out, err = run_infir("status", "runs/sample")
    assert rc == 0 and "query_negative_not_minimal" in out + err and f"{len(bad):,} rejected before the judge" in out + err


def old_prefilter(row: dict) -> list[str]:
    """verify's pre-filters as they were before the filter stage (its defaults), kept as this
    test's reference: the filter stage must reject at least what they rejected."""
    from rapidfuzz import fuzz

    from pipeline.columns import INFIR_COLUMNS
    from pipeline.sources.text import match_key, word_count

    failed = [f"empty_{f}" for f in INFIR_COLUMNS if not (row.get(f) or "").strip()]
    if failed:
        return failed
    limits = {"instruction_positive": 80, "instruction_negative": 80, "query_negative": 40,
              "hard_negative_document_1": 400, "hard_negative_document_2": 400}
    failed += [f"too_long_{f}" for f, n in limits.items() if word_count(row[f]) > n]
    ipos, ineg = match_key(row["instruction_positive"]), match_key(row["instruction_negative"])
    if ipos == ineg or fuzz.ratio(ipos, ineg) >= 95:
        failed.append("ineg")
    if match_key(row["query_positive"]) == match_key(row["query_negative"]):
        failed.append("qneg")
    pos = match_key(row["document_positive"])
    failed += [f for f in ("hard_negative_document_1", "hard_negative_document_2") if fuzz.ratio(pos, match_key(row[f])) >= 90]
    if fuzz.partial_ratio(ipos, pos) >= 90 and word_count(ipos) >= 8:
        failed.append("copies")
    return failed


@pytest.mark.slow
def test_filter_rejects_every_row_the_old_prefilters_rejected_on_msmarco(tmp_path, msmarco):
    cfg = make_config(**{"source.path": str(msmarco), "source.max_passage_words": 250})
    run_until(cfg, "filter")
    rows = [r for p in sorted((tmp_path / "runs/sample/filter").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    old = {r["id"] for r in rows if not r["mine_error"] and old_prefilter(r)}
    new = {r["id"] for r in rows if r["failed_filters"]}
    assert old and old <= new, sorted(old - new)[:5]
