"""LLM client behaviour: repair, request parameters, budget, estimates, schema, callbacks."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from llm_fixtures import Verdict, api_key, item_of, make_tasks, settings_for, write_prompt  # noqa: E402,F401
from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.llm import (  # noqa: E402
    BUDGET_EXHAUSTED,
    LLMClient,
    PriceTable,
    build_body,
    default_params,
    is_reasoning_model,
    make_client,
    parse_response,
    strict_json_schema,
)
from pipeline.llm.openai_api.request import response_format_for  # noqa: E402
from pipeline.llm.tokens import estimate_prompt_tokens  # noqa: E402


# -- repair ---------------------------------------------------------------------------------------


def test_schema_violation_repaired_once_and_cached(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    task = make_tasks(prompt, 1)[0]
    with FakeOpenAIServer(script=["schema"]) as srv:
        s = settings_for(srv, tmp_path)
        c = make_client(s)
        r = c.run([task])[0]
        assert r.ok and r.repaired and r.http_calls == 2 and c.totals.repairs == 1
        assert isinstance(r.value, Verdict)
        first, repair = (q.body for q in srv.chat_requests())
        assert repair["messages"][:2] == first["messages"]
        assert repair["messages"][2] == {"role": "assistant", "content": '{"unexpected": true}'}
        assert repair["messages"][3]["role"] == "user"
        assert "schema violation" in repair["messages"][3]["content"]
        assert '"required":["label","score","reasons"]' in repair["messages"][3]["content"]
        assert repair["response_format"] == first["response_format"]
        c.close()
        # The bad answer and the repair are both cached: a rerun costs nothing.
        c2 = make_client(s)
        r2 = c2.run([task])[0]
        assert srv.count == 2 and r2.ok and r2.cached and r2.repaired and r2.value == r.value
        c2.close()


def test_two_bad_answers_fail_with_reason(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")

    def fault(n, body):  # item 0: a schema violation, then a malformed repair answer
        if item_of(body) != 0:
            return None
        return "malformed" if len(body["messages"]) > 2 else "schema"

    with FakeOpenAIServer(fault_fn=fault) as srv:
        c = make_client(settings_for(srv, tmp_path))
        r, r_next = c.run(make_tasks(prompt, 2))
    assert not r.ok and r.value is None and r.http_calls == 2
    assert r.error.startswith("invalid after one repair: invalid JSON")
    assert "(first answer: schema violation" in r.error
    assert r.raw_text.startswith("Sure! Here is the JSON")
    assert r_next.ok  # the run goes on
    assert srv.count == 3 and c.totals.failures == 1


@pytest.mark.parametrize("fault,error", [("length", "truncated"), ("refusal", "refusal"), ("empty", "no choices")])
def test_other_invalid_answers_repaired(tmp_path, api_key, fault, error):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=[fault]) as srv:
        c = make_client(settings_for(srv, tmp_path))
        r = c.run(make_tasks(prompt, 1))[0]
        first, repair = (q.body for q in srv.chat_requests())
    assert r.ok and r.repaired and r.http_calls == 2
    assert error in repair["messages"][-1]["content"]
    if fault == "length":  # a truncated answer gets twice the token limit
        assert first["max_tokens"] == 200 and repair["max_tokens"] == 400
    if fault == "empty":  # no bad answer to quote
        assert len(repair["messages"]) == 3


def test_repair_disabled(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["schema"]) as srv:
        c = make_client(settings_for(srv, tmp_path, repair=False))
        r = c.run(make_tasks(prompt, 1))[0]
    assert not r.ok and r.error.startswith("schema violation") and srv.count == 1


def test_parser_accepts_fenced_json_and_reports_errors():
    ok = {"choices": [{"message": {"content": '```json\n{"label":"a","score":1,"reasons":[]}\n```'},
                       "finish_reason": "stop"}]}
    assert parse_response(ok, Verdict).value == Verdict(label="a", score=1, reasons=[])
    bad = {"choices": [{"message": {"content": '{"label":"a","score":"x"}'}, "finish_reason": "stop"}]}
    out = parse_response(bad, Verdict)
    assert out.value is None and out.error.startswith("schema violation: score:")
    assert "reasons: Field required" in out.error
    arr = {"choices": [{"message": {"content": "[1]"}, "finish_reason": "stop"}]}
    assert parse_response(arr, Verdict).error == "invalid JSON: expected an object, got list"
    deep = {"choices": [{"message": {"content": "[" * 100_000}, "finish_reason": "stop"}]}
    assert parse_response(deep, Verdict).error == "invalid JSON: nested too deeply"


# -- request parameters ---------------------------------------------------------------------------


def test_reasoning_model_params(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    o3 = default_params("o3-mini", temperature=0.7, max_tokens=500, reasoning_effort="low")
    assert o3 == {"reasoning_effort": "low", "max_completion_tokens": 500}
    chat = default_params("gpt-4o-mini", temperature=0.7, max_tokens=300)
    assert chat == {"temperature": 0.7, "max_tokens": 300}
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        rs = c.run(make_tasks(prompt, 1, model="o3-mini", params=o3) + make_tasks(prompt, 1, params=chat, start=1))
        by_model = {q.body["model"]: q.body for q in srv.chat_requests()}
    assert all(r.ok for r in rs)
    b = by_model["o3-mini"]
    assert b["reasoning_effort"] == "low" and b["max_completion_tokens"] == 500
    assert "temperature" not in b and "max_tokens" not in b
    g = by_model["gpt-4o-mini"]
    assert g["temperature"] == 0.7 and g["max_tokens"] == 300 and "reasoning_effort" not in g
    rf = b["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Verdict" and rf["json_schema"]["strict"] is True


@pytest.mark.parametrize(
    "model,reasoning",
    [("o1", True), ("o3-mini", True), ("o4-mini", True), ("gpt-5-mini", True), ("openai/o3-mini", True),
     ("gpt-5-chat-latest", False), ("gpt-4o-mini", False), ("gpt-4.1-mini", False), ("llama3", False)],
)
def test_is_reasoning_model(model, reasoning):
    assert is_reasoning_model(model) is reasoning
    assert ("temperature" not in default_params(model)) is reasoning


def test_body_shape_and_reserved_params(tmp_path):
    prompt = write_prompt(tmp_path)
    t = make_tasks(prompt, 1, params={"temperature": 0.1, "max_tokens": None, "seed": 3})[0]
    body = build_body(t)
    assert list(body) == ["model", "messages", "temperature", "seed", "response_format"]
    with pytest.raises(Exception, match="may not set"):
        build_body(replace(t, params={"model": "x"}))


class Inner(BaseModel):
    title: str = Field(description="a field named like a schema keyword")
    default: int = 3


class Outer(BaseModel):
    inner: Inner = Field(description="described ref")
    items: list[Inner]
    maybe: str | None = None


def _walk(node, found):
    if isinstance(node, dict):
        if "properties" in node:
            found.append(node)
        if "$ref" in node:
            assert set(node) == {"$ref"}, node  # strict mode: no siblings next to $ref
        for v in node.values():
            _walk(v, found)
    elif isinstance(node, list):
        for v in node:
            _walk(v, found)


def test_strict_schema_every_object_closed_and_required():
    schema = strict_json_schema(Outer)
    objects: list = []
    _walk(schema, objects)
    assert len(objects) == 3  # Outer, inlined Inner (described), $defs Inner
    for o in objects:
        assert o["additionalProperties"] is False
        assert o["required"] == list(o["properties"])
    assert schema["properties"]["inner"]["description"] == "described ref"
    assert list(schema["$defs"]["Inner"]["properties"]) == ["title", "default"]  # names and order kept
    assert list(schema["properties"]) == ["inner", "items", "maybe"]
    assert "default" not in schema["$defs"]["Inner"]["properties"]["default"]
    assert schema["properties"]["maybe"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert response_format_for(Outer)["json_schema"]["schema"] == schema


# -- budget ---------------------------------------------------------------------------------------


def test_budget_stops_sending_and_rerun_resumes(tmp_path, api_key):
    prices = tmp_path / "prices.toml"
    # $1 per output token; the server reports 5 output tokens per answer: $5 a call.
    prices.write_text('[models."test-model"]\ninput = 0.0\noutput = 1000000.0\n', encoding="utf-8")
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 6, model="test-model")
    with FakeOpenAIServer(usage=(10, 5)) as srv:
        s = settings_for(srv, tmp_path, concurrency=1, max_cost_usd=12.0, price_file=prices)
        c = make_client(s)
        seen = []
        rs = c.run(tasks, on_result=seen.append)
        assert srv.count == 3  # $5, $10, $15 >= $12: stop
        assert [r.ok for r in rs] == [True, True, True, False, False, False]
        assert [r.error for r in rs[3:]] == [BUDGET_EXHAUSTED] * 3
        assert c.budget_exhausted and c.totals.cost_usd == pytest.approx(15.0)
        assert [r.cost_usd for r in rs] == [5.0, 5.0, 5.0, 0.0, 0.0, 0.0]
        assert len(seen) == 6
        c.close()
        c2 = make_client(s.model_copy(update={"max_cost_usd": 100.0}))
        rs2 = c2.run(tasks)
        assert all(r.ok for r in rs2) and [r.cached for r in rs2] == [True] * 3 + [False] * 3
        assert srv.count == 6 and not c2.budget_exhausted
        assert c2.totals.cost_usd == pytest.approx(15.0) and c2.totals.saved_cost_usd == pytest.approx(15.0)
        c2.close()


# -- estimate -------------------------------------------------------------------------------------


def test_estimate_counts_cached_as_free(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 10)
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        c.run(tasks[:4])
        est = c.estimate(tasks)
        assert srv.count == 4  # estimating sends nothing
    assert est["calls"] == 6 and est["cached"] == 4
    assert est["completion_tokens"] == 6 * 50  # the prompt's expected_output_tokens hint
    pts = [estimate_prompt_tokens(build_body(t)["messages"]) for t in tasks[4:]]
    assert est["prompt_tokens"] == sum(pts)
    table = PriceTable.load()
    assert est["cost_usd"] == pytest.approx(sum(table.cost("gpt-4o-mini", p, 50) for p in pts))


# -- run facade -----------------------------------------------------------------------------------


def test_results_in_input_order_and_callback_per_task(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 40)
    calls = []
    with FakeOpenAIServer(script=[None] * 5 + ["500"] * 5, latency=0.01) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=8))
        rs = c.run(tasks, on_result=lambda r: calls.append(r.key_id))
    assert [r.key_id for r in rs] == [t.key_id for t in tasks]
    assert sorted(calls, key=int) == [t.key_id for t in tasks] and len(calls) == 40
    assert c.totals.requests == 40 and c.totals.http_calls == 45 and c.totals.retries == 5


def test_sync_run_inside_a_running_loop(tmp_path, api_key):
    import asyncio

    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))

        async def notebook_cell():
            return c.run(make_tasks(prompt, 3))  # sync call while a loop runs (Jupyter)

        rs = asyncio.run(notebook_cell())
        rs2 = c.run(make_tasks(prompt, 4))  # and again on a fresh loop
    assert all(r.ok for r in rs + rs2) and srv.count == 4


def test_callback_error_surfaces(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")

    def boom(r):
        raise OSError("disk full")

    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        with pytest.raises(OSError, match="disk full"):
            c.run(make_tasks(prompt, 3), on_result=boom)


def test_concurrency_bound_respected(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(latency=0.05) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=5))
        assert all(r.ok for r in c.run(make_tasks(prompt, 30)))
        reqs = srv.chat_requests()
    # A slot is free once the client has the reply, which is after the server began sending it.
    events = sorted([(q.arrived, 1) for q in reqs] + [(q.replying, -1) for q in reqs])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 5


def test_async_api_and_unknown_backend_error(tmp_path):
    import asyncio

    prompt = write_prompt(tmp_path / "p")

    class Broken:
        name = "broken"

        async def complete(self, body, task):
            raise RuntimeError("bug in backend")

    c = LLMClient(settings_for("http://unused", tmp_path, cache_path=None), Broken())
    rs = asyncio.run(c.arun(make_tasks(prompt, 2)))
    assert [r.error for r in rs] == ["backend error: RuntimeError: bug in backend"] * 2
    assert c.totals.failures == 2 and c.totals.retries == 0


def test_offline_backend_setting_imports_lead_module(tmp_path):
    import pipeline.generation.offline_backend  # noqa: F401  the domain registers the "offline" script
    c = make_client(settings_for("http://unused", tmp_path, backend="offline", cache_path=None))
    assert c.backend.name == "offline"


def test_missing_key_env_is_a_user_error(tmp_path, monkeypatch):
    from pipeline.errors import InfirError

    monkeypatch.delenv("INFIR_NO_SUCH_KEY", raising=False)
    with pytest.raises(InfirError, match="INFIR_NO_SUCH_KEY is not set"):
        make_client(settings_for("http://x", tmp_path, api_key_env="INFIR_NO_SUCH_KEY", cache_path=None))


def test_result_json_roundtrip(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        r = c.run(make_tasks(prompt, 1))[0]
    assert json.loads(r.raw_text) == r.value.model_dump()
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.cost_usd == pytest.approx(
        PriceTable.load().cost("gpt-4o-mini", r.usage.prompt_tokens, r.usage.completion_tokens)
    )
