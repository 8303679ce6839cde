"""Model families and prices: dated snapshots priced as themselves, prices declared in the config,
the reasoning_effort values and parameters each family takes, and the test server refusing what
the service refuses (issue #26, points 4 and 5)."""

from __future__ import annotations

import logging

import openai
import pytest

from llm_fixtures import make_tasks, write_prompt
from openai_server import FakeOpenAIServer
from pipeline.errors import InfirError
from pipeline.llm.families import accepts, assumption, effort_problem, family_of, is_reasoning_model
from pipeline.llm.openai_api.request import build_body, default_params
from pipeline.llm.openai_api.request import is_reasoning_model as reexported
from pipeline.llm.pricing import PriceTable
from pipeline.llm.settings import LLMSettings

M = 1_000_000


# -- prices ---------------------------------------------------------------------------------------


def test_dated_snapshot_is_priced_as_itself_where_its_price_differs():
    t = PriceTable.load()
    # gpt-4o-2024-05-13 is listed at $5 in / $15 out with no cached-input discount, not gpt-4o's $2.50 / $10.
    assert t.cost("gpt-4o-2024-05-13", M, M) == pytest.approx(5.00 + 15.00)
    assert t.cost("gpt-4o-2024-05-13", M, 0, cached_tokens=M) == pytest.approx(5.00)
    assert t.cost("gpt-4o-2024-05-13", M, M, batch=True) == pytest.approx(10.00)
    # A snapshot priced like its alias still falls back to the alias's row.
    assert t.cost("gpt-4o-2024-08-06", M, M) == pytest.approx(2.50 + 10.00)
    assert t.cost("openai/gpt-4o-2024-05-13", M, 0) == pytest.approx(5.00)


def test_config_prices_merge_over_the_table_and_the_config_wins():
    s = LLMSettings(prices={"o9-mini": {"input": 1.5, "output": 6.0},
                            "gpt-4o-mini": {"input": 1.0, "cached_input": 0.5, "output": 2.0, "batch_discount": 0.25}})
    t = PriceTable.for_settings(s)
    assert PriceTable.load().lookup("o9-mini") is None
    assert t.cost("o9-mini", M, M) == pytest.approx(7.5)
    assert t.cost("o9-mini", M, 0, cached_tokens=M) == pytest.approx(1.5)  # cached_input defaults to input
    assert t.cost("o9-mini", M, M, batch=True) == pytest.approx(3.75)  # the table's default discount
    assert t.cost("gpt-4o-mini", M, M, cached_tokens=M // 2) == pytest.approx(0.5 + 0.25 + 2.0)
    assert t.cost("gpt-4o-mini", M, 0, batch=True) == pytest.approx(0.25)
    assert t.cost("gpt-4o", M, M) == pytest.approx(12.5)  # the rest of the bundled table is kept


def test_price_file_rows_are_validated_naming_the_key(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[models."mine"]\ninput = -1.0\noutput = 4.0\n')
    with pytest.raises(InfirError, match=r"p\.toml: model 'mine': input: .*greater than or equal to 0"):
        PriceTable.load(f)
    f.write_text('[models."mine"]\ninput = nan\noutput = 4.0\n')
    with pytest.raises(InfirError, match=r"model 'mine': input: .*finite"):
        PriceTable.load(f)
    f.write_text('[models."mine"]\ninput = 1.0\noutput = 4.0\nouptut = 3\n')
    with pytest.raises(InfirError, match=r"model 'mine': ouptut: unknown key"):
        PriceTable.load(f)


def test_unknown_model_is_said_once_per_process_however_many_tables(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.llm.pricing"):
        for _ in range(3):
            t = PriceTable.load()
            t.say_unpriced("o7-said-once", "no price for o7-said-once")
            assert t.cost("o7-said-once", 1000, 1000) == 0.0
    assert [r.getMessage() for r in caplog.records if "o7-said-once" in r.getMessage()] == ["no price for o7-said-once"]


# -- model families -------------------------------------------------------------------------------


@pytest.mark.parametrize("model,efforts", [
    ("o3-mini", ("low", "medium", "high")), ("o1", ("low", "medium", "high")), ("o4-mini-2025-04-16", ("low", "medium", "high")),
    ("gpt-5", ("minimal", "low", "medium", "high")), ("gpt-5-mini", ("minimal", "low", "medium", "high")),
    ("gpt-5-nano", ("minimal", "low", "medium", "high")), ("gpt-5.1", ("none", "low", "medium", "high")),
    ("openai/o3-mini", ("low", "medium", "high")), ("o1-mini", ()),
])
def test_reasoning_effort_values_per_family(model, efforts):
    fam = family_of(model)
    assert fam.reasoning and fam.efforts == efforts and fam.assumed is None
    for effort in ("none", "minimal", "low", "medium", "high"):
        assert (effort_problem(model, effort) is None) is (effort in efforts), (model, effort)
    assert not accepts(model, "logprobs") and not accepts(model, "temperature") and not accepts(model, "max_tokens")


def test_chat_models_and_what_is_assumed_of_unknown_ones():
    for model in ("gpt-4o-mini", "gpt-4.1", "gpt-5-chat-latest", "llama3"):
        assert not is_reasoning_model(model) and accepts(model, "logprobs") and assumption(model) is None
        assert effort_problem(model, "minimal") is None  # never sent one
    line = assumption("o9-mini")
    assert line.startswith("o9-mini: not a model infir knows; assumed an o-series reasoning model")
    assert "low, medium or high" in line and "\n" not in line
    assert "minimal" in effort_problem("o9-mini", "minimal") and "assumed an o-series" in effort_problem("o9-mini", "minimal")
    assert reexported is is_reasoning_model  # the old import path keeps working
    assert default_params("o1-mini") == {"max_completion_tokens": 4096}  # o1-mini takes no reasoning_effort


def test_request_body_refuses_what_the_family_rejects(tmp_path):
    prompt = write_prompt(tmp_path)
    bad = [({"reasoning_effort": "minimal", "max_completion_tokens": 10}, r"o3-mini \(o-series\) accepts reasoning_effort"),
           ({"reasoning_effort": "low", "logprobs": True}, r"does not take \['logprobs'\]"),
           ({"reasoning_effort": "low", "top_p": 0.5}, r"does not take \['top_p'\]")]
    for params, msg in bad:
        with pytest.raises(InfirError, match=msg):
            build_body(make_tasks(prompt, 1, model="o3-mini", params=params)[0])
    ok = build_body(make_tasks(prompt, 1, model="gpt-5-mini", params={"reasoning_effort": "minimal"})[0])
    assert ok["reasoning_effort"] == "minimal"


# -- the test server refuses what the service refuses -----------------------------------------------


def test_server_answers_400_to_what_the_model_does_not_take():
    msgs = [{"role": "user", "content": "hi"}]
    with FakeOpenAIServer() as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
        try:
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="o3-mini", messages=msgs, reasoning_effort="minimal")
            assert e.value.status_code == 400
            assert e.value.body == {
                "message": "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. "
                           "Supported values are: 'low', 'medium', and 'high'.",
                "type": "invalid_request_error", "param": "reasoning_effort", "code": "unsupported_value"}
            with pytest.raises(openai.BadRequestError, match="'temperature' is not supported with this model"):
                client.chat.completions.create(model="o3-mini", messages=msgs, temperature=0.2)
            ok = client.chat.completions.create(model="gpt-5-mini", messages=msgs, reasoning_effort="minimal")
            assert ok.choices[0].message.content
            ok = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, temperature=0.2)
            assert ok.choices[0].message.content
        finally:
            client.close()
    assert [r.status for r in srv.chat_requests()] == [400, 400, 200, 200]
