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


# ---- a model with no price (issue #26 point 4) -------------------------------------------------------

O9 = ("--backend", "openai", "--set", "verify.model=o9-mini")


def _infir_against(server, *args: str):
    """The CLI against `server`, 5 source queries, a key in the environment (a run could send)."""
    return run_infir(*args, "--set", f"source.path={_sample()}", "--set", f"llm.base_url={server.base_url}",
                     "--set", "source.sample_queries=5", "--set", "llm.concurrency=2",
                     env={"OPENAI_API_KEY": "sk-test-prices"})


@pytest.mark.parametrize("command", [
    ("build", "--max-cost-usd", "5"), ("build", "--dry-run"), ("verify", "--dry-run"),
    ("plan", "--target-accepted", "10"), ("build", "--target-accepted", "10"),
], ids=["build-cap", "build-dry-run", "stage-dry-run", "plan", "build-target"])
def test_unpriced_model_stops_the_run_before_any_request(tmp_path, server, command):
    code, out, err = _infir_against(server, *command, *O9)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "verify.model = 'o9-mini'" in lines[0] and '[llm.prices."o9-mini"]' in lines[0], lines[0]
    assert "--set llm.prices.o9-mini.input=" in lines[0]
    assert server.count == 0
    assert not (tmp_path / "runs").exists()  # not even the free source stage ran


def test_unpriced_model_without_a_cap_runs_and_says_so_once(tmp_path, server):
    code, out, err = _infir_against(server, "build", "--until", "verify", *O9)
    assert code == 0, err[-1500:]
    said = [line for line in err.splitlines() if "no price for" in line]
    assert len(said) == 1 and "verify.model = 'o9-mini'" in said[0] and "not counted" in said[0], err
    assumed = [line for line in err.splitlines() if "assumed an o-series reasoning model" in line]
    assert len(assumed) == 1, err
    judged = [r for r in server.chat_requests() if r.body["model"] == "o9-mini"]
    assert judged and all(r.status == 200 and r.body["reasoning_effort"] == "medium" for r in judged)


def test_declared_price_runs_and_the_cap_holds(tmp_path):
    from pipeline.llm.budget import SpendLedger
    from run_helpers import billing_server

    cap = 3.0
    with billing_server() as srv:  # o9-mini answers carry ~2,050 hidden reasoning tokens on average
        code, out, err = _infir_against(
            srv, "build", "--until", "verify", "--max-cost-usd", str(cap), *O9,
            "--set", "llm.prices.o9-mini.input=100", "--set", "llm.prices.o9-mini.output=400")
        judged = [r for r in srv.chat_requests() if r.body["model"] == "o9-mini"]
    assert code == 2 and "stopped at the cost budget" in err, err[-1500:]
    ledger = SpendLedger(tmp_path / "runs/sample/spend.sqlite3")
    try:
        spent = ledger.spent()
        priciest = ledger._db.execute("SELECT MAX(usd) FROM spend").fetchone()[0]
    finally:
        ledger.close()
    assert judged and priciest > 0.5  # the judge's answers priced at the declared $100 / $400 per 1M
    assert cap - priciest <= spent <= cap + 2 * priciest  # llm.concurrency answers in flight past the cap
