"""`llm.structured_output`: the strict schema sent in the form the server speaks. "json_object"
sends `{"type": "json_object", "schema": <strict schema>}` (llama-cpp-python's server takes only
that); the parse is the same pydantic validation, and the form is in the body, so in the cache key.
Against the local server answering as llama-cpp-python's does (`response_formats`)."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from llm_fixtures import Verdict, write_prompt  # noqa: E402
from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.errors import InfirError  # noqa: E402
from pipeline.generation.models import GeneratedInstruction, JudgeVerdicts, PoisonedPair  # noqa: E402
from pipeline.llm import LLMTask, build_body, cache_key, parse_response, strict_json_schema  # noqa: E402
from stage_helpers import run_until  # noqa: E402
from test_llm_stages import openai_cfg, responder as stage_responder  # noqa: E402

LLAMA_FORMS = ("text", "json_object")
MODELS = (GeneratedInstruction, PoisonedPair, JudgeVerdicts)
_NAME_BY_FIELDS = {frozenset(strict_json_schema(m)["properties"]): m.__name__ for m in MODELS}


def llama_responder(body):
    """The stage tests' scripted answers, found by the schema's fields (a json_object request
    carries no schema name)."""
    rf = body["response_format"]
    assert rf["type"] == "json_object", rf
    name = _NAME_BY_FIELDS[frozenset(rf["schema"]["properties"])]
    return stage_responder({**body, "response_format": {"type": "json_schema", "json_schema": {"name": name}}})


def _task(prompt, form: str) -> LLMTask:
    return LLMTask(key_id="1", prompt=prompt, variables={"i": 1, "query": "q", "passage": "p"}, output_model=Verdict,
                   model="gpt-4o-mini", params={"temperature": 0.0, "max_tokens": 100}, structured_output=form)


def test_json_object_form_sends_the_same_strict_schema_and_keys_apart(tmp_path):
    prompt = write_prompt(tmp_path / "p")
    schema_body, object_body = build_body(_task(prompt, "json_schema")), build_body(_task(prompt, "json_object"))
    assert object_body["response_format"] == {"type": "json_object", "schema": strict_json_schema(Verdict)}
    assert schema_body["response_format"]["json_schema"]["schema"] == strict_json_schema(Verdict)
    # Everything else is the same request; the form is in the body, so the cache keys differ.
    assert {k: v for k, v in schema_body.items() if k != "response_format"} == \
        {k: v for k, v in object_body.items() if k != "response_format"}
    assert cache_key(schema_body) != cache_key(object_body)
    # One parser for both: the answer is validated by the output model either way.
    answer = {"choices": [{"message": {"content": json.dumps({"label": "x", "score": 1, "reasons": []})},
                           "finish_reason": "stop"}]}
    assert parse_response(answer, Verdict).value == Verdict(label="x", score=1, reasons=[])
    with pytest.raises(InfirError, match="llm.structured_output"):
        build_body(_task(prompt, "xml"))


def test_setting_is_validated_at_load():
    from conftest import make_config

    assert make_config().llm.structured_output == "json_schema"
    with pytest.raises(InfirError, match="structured_output"):
        make_config(**{"llm.structured_output": "grammar"})


def test_json_object_form_against_a_llama_like_server_answers_every_row(tmp_path, monkeypatch):
    """generate, mine, filter, verify against a server that answers json_schema with HTTP 500, as
    llama-cpp-python's does: with llm.structured_output = "json_object" every row is answered."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-structured")
    with FakeOpenAIServer(responder=llama_responder, response_formats=LLAMA_FORMS) as srv:
        cfg = openai_cfg(srv, **{"llm.structured_output": "json_object"})
        run_until(cfg, "verify")
        reqs = srv.chat_requests()
        assert reqs and all(r.status == 200 for r in reqs), {r.status for r in reqs}
        assert {r.body["response_format"]["type"] for r in reqs} == {"json_object"}
        by_model = {frozenset(r.body["response_format"]["schema"]["properties"]) for r in reqs}
        assert by_model == set(_NAME_BY_FIELDS)  # generate, mine and the judge all sent it
        rows = pq.read_table(tmp_path / "runs/sample/verify/part-00000.parquet").to_pylist()
        assert len(rows) == 10
        for r in rows:
            assert r["generate_error"] is None and r["mine_error"] is None and r["verify_error"] is None, r
        assert sum(bool(r["verdicts"]) for r in rows) > 0  # the judge's answers were parsed into rows
        # A rerun is served from the cache: the keys of the json_object bodies.
        srv.reset()
        run_until(cfg, "verify", force=True)
        assert srv.count == 0
