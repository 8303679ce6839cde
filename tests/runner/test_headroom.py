"""The dry run says what a smaller max-tokens setting would buy under a tokens-per-minute limit, from the
usage the stage's answers showed (runner/headroom.py); figures checked against the shards' own usage."""

from __future__ import annotations

import math

import pyarrow.parquet as pq

from conftest import make_config
from pipeline.declaration import PIPELINE
from pipeline.runner.estimate import dry_run
from openai_server import FakeOpenAIServer, seeded_reasoning
from run_helpers import realistic
from stage_helpers import run_until

KEY = "sk-test-headroom"


def judge_server() -> FakeOpenAIServer:
    """Answers of realistic length; the judge reasons ~1,200 tokens (o3-mini at low effort), far below
    the 4,000 verify asks for."""
    return FakeOpenAIServer(responder=realistic, reasoning_tokens=seeded_reasoning(1200, 0.3, low=300, high=2000))


def _usage(stage_dir, column):
    rows = []
    for path in sorted(stage_dir.glob("part-*.parquet")):
        rows += [u for u in pq.read_table(path, columns=[column]).column(column).to_pylist() if u]
    return rows


def test_dry_run_says_the_throughput_a_smaller_max_would_buy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with judge_server() as srv:
        cfg = make_config(**{"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.concurrency": 8})
        run_until(cfg, "verify")
    capsys.readouterr()
    estimates = {e.stage: e for e in dry_run(PIPELINE, cfg, ["generate", "mine", "verify"], as_json=True)}
    assert capsys.readouterr().out.strip().startswith("{")  # the estimate as JSON, notes included

    # By hand, from the judge's shards: o3-mini asks 4,000; its answers (reasoning included) are shorter.
    usage = _usage(tmp_path / "runs" / "sample" / "verify", "usage_verify")
    completions = sorted(u["completion_tokens"] for u in usage)
    prompt = sum(u["prompt_tokens"] for u in usage) / len(usage)
    safe = math.ceil(completions[-1] * 1.05 / 100) * 100
    assert safe < 4000
    gain = (prompt + 4000) / (prompt + safe)
    note = next(n for n in estimates["verify"].notes if n.startswith("asks "))
    assert f"asks 4,000 max tokens per request; its {len(usage):,} answers" in note
    assert f"verify.max_completion_tokens = {safe:,} (above the longest answer) would let {gain:.2f}x" in note
    assert f"longest {completions[-1]:,}" in note
    # generate asks 300 for answers of ~60 tokens: a line too, with its own key.
    assert any("generate.max_tokens = " in n for n in estimates["generate"].notes)


def test_no_advice_without_enough_answers_or_room(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with judge_server() as srv:
        cfg = make_config(**{"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.concurrency": 8,
                             "source.sample_queries": 12, "generate.max_tokens": 120})
        run_until(cfg, "verify")
    estimates = {e.stage: e for e in dry_run(PIPELINE, cfg, ["generate", "verify"], as_json=True)}
    capsys.readouterr()
    # Fewer than 20 answers: nothing said about the judge; generate's max is already near its answers.
    assert not any("max tokens per request" in n for e in estimates.values() for n in e.notes)


def test_plan_says_it_from_the_pilots_usage(tmp_path, monkeypatch):
    from pipeline.runner.plan import describe, plan

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with judge_server() as srv:
        cfg = make_config(**{"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.concurrency": 8})
        p = plan(PIPELINE, cfg, target=50, pilot=40)
    pilot = tmp_path / "runs" / "sample-pilot" / "verify"
    assert len(_usage(pilot, "usage_verify")) >= 20
    lines = [ln for ln in describe(p) if ln.startswith("rate limit: verify: asks 4,000 max tokens")]
    assert len(lines) == 1 and "verify.max_completion_tokens = " in lines[0], describe(p)
