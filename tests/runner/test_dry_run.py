"""`--dry-run`: estimates from the very requests a stage would send; nothing sent, nothing written."""

from __future__ import annotations

import pytest

from conftest import run_infir
from openai_server import FakeOpenAIServer
from pipeline.llm.pricing import PriceTable
from pipeline.declaration import PIPELINE
from pipeline.runner.estimate import dry_run
from stage_helpers import run_generate
from stage_helpers import run_source
from test_llm_stages import openai_cfg, responder


@pytest.fixture
def server():
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


def test_dry_run_sends_nothing_and_prices_every_request(tmp_path, server, monkeypatch, capsys):
    cfg = openai_cfg(server)  # no API key set: a dry run must not need one
    run_source(cfg)
    (gen, mine, verify) = dry_run(PIPELINE, cfg, ["generate", "mine", "verify"])
    assert server.count == 0
    assert not (tmp_path / "runs/sample/generate").exists()
    assert (gen.calls, gen.cached, gen.exact) == (10, 0, True)
    assert (mine.exact, verify.exact) == (False, False)  # upstream not run: stand-ins
    assert mine.calls == 10 and verify.calls == 10
    prices = PriceTable.load()
    for e in (gen, mine):
        assert e.model == "gpt-4o-mini"
        assert e.cost_usd == pytest.approx(prices.cost("gpt-4o-mini", e.prompt_tokens, e.completion_tokens))
        assert e.batch_cost_usd == pytest.approx(e.cost_usd / 2)
    assert verify.model == "o3-mini"
    assert verify.cost_usd == pytest.approx(prices.cost("o3-mini", verify.prompt_tokens, verify.completion_tokens))
    out = capsys.readouterr().out
    assert "batch $" in out and "online $" in out and "nothing sent" in out


def test_dry_run_counts_cached_requests_as_free_and_tracks_prompt_tokens(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dry-run")
    cfg = openai_cfg(server)
    run_source(cfg)
    before = dry_run(PIPELINE, cfg, ["generate"])[0]
    run_generate(cfg)
    sent = [r.body for r in server.chat_requests()]
    assert len(sent) == 10
    after = dry_run(PIPELINE, cfg, ["generate", "mine"])
    assert server.count == 10  # still only the real run's requests
    assert (after[0].calls, after[0].cached, after[0].cost_usd) == (0, 10, 0.0)
    # mine is now priced from generate's real output, not stand-ins.
    assert after[1].exact and after[1].calls == 10
    # The estimate's prompt tokens are those of the requests actually sent (tiktoken or chars/4).
    from pipeline.llm.tokens import estimate_prompt_tokens

    actual = sum(estimate_prompt_tokens(b["messages"], b["model"], exact=True) for b in sent)
    assert before.prompt_tokens == actual


def test_cli_dry_run_build_and_stage(tmp_path):
    code, out, err = run_infir("build", "--dry-run", "--backend", "openai", "--set", f"source.path={_sample()}")
    assert code == 0, err
    assert "dry run" in out and "generate" in out and "verify *" in out
    assert (tmp_path / "runs/sample/source/_SUCCESS.json").exists()
    assert not (tmp_path / "runs/sample/generate").exists()
    code, out, err = run_infir("mine", "--dry-run", "--set", f"source.path={_sample()}")
    assert code == 0, err
    assert "mine *" in out and "generate has not run" in out


def test_dry_run_without_source_says_what_to_run(tmp_path):
    code, out, err = run_infir("generate", "--dry-run", "--set", f"source.path={_sample()}")
    assert code == 2 and "infir source" in err and "Traceback" not in err


def _sample():
    from conftest import SAMPLE

    return SAMPLE
