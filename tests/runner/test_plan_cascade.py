"""`infir plan` prices the judge cascade as the dry run does: the first judge on every candidate,
the reasoning judge only on the share the first judge lets through, each kind of request at its
own model's batch discount; the pilot judges with the run's calibration.

The server bills every request exactly the tokens the dry run expects for it (the estimator's own
count of the prompt, the prompt file's `expected_output_tokens`, the price table's reasoning): the
estimator's accuracy is another test's subject (tests/runner/test_budget.py); here any difference
is in how the plan and the dry run compose and price the cascade."""

from __future__ import annotations

import hashlib

import pytest

from cascade_script import CascadeScript
from openai_server import FakeOpenAIServer, data_block
from pipeline.declaration import PIPELINE
from pipeline.generation.cascade import calibration_path
from pipeline.llm.pricing import PriceTable
from pipeline.llm.prompts import load_prompt
from pipeline.llm.tokens import estimate_prompt_tokens
from pipeline.runner.calibrate import calibrate_judge
from pipeline.runner.estimate import dry_run
from pipeline.runner.plan import describe, plan
from stage_helpers import run_until
from test_llm_stages import openai_cfg

KEY = "sk-test-plan-cascade"
PROMPT_OF = {"GeneratedInstruction": "generate_instruction", "PoisonedPair": "poison",
             "JudgeVerdicts": "judge", "FirstJudgeVerdicts": "judge_first"}
PRICES = PriceTable.load()
# The dry run prices the judge on the share of the average candidate's request, the pilot paid for
# the rows that actually survived: their prompts differ in length (the passages). The judge's bill
# is mostly its fixed output and reasoning, so this stays far below 1% (0.01% on this sample).
JUDGE_TOLERANCE = 0.01


def billed_as_estimated(body: dict) -> tuple[int, int, int, int]:
    """(prompt, completion, cached, reasoning) tokens: what `LLMClient.expected_tokens` expects."""
    prompt = load_prompt(PROMPT_OF[body["response_format"]["json_schema"]["name"]])
    reasoning = PRICES.expected_reasoning(body["model"], body.get("reasoning_effort"))
    pt = estimate_prompt_tokens(body["messages"], body["model"], exact=True)
    return pt, prompt.expected_output_tokens + reasoning, 0, reasoning


class HashedScript(CascadeScript):
    """The first judge fails `positive_fits` with p 0.99 on the rows whose Q+ hashes to 0 or 1 mod 5
    (about 40%), and the reasoning judge fails the same rows: no false rejects, so the calibration
    recommends a threshold that rejects them and the rest reach the judge."""

    def respond(self, body):
        user = body["messages"][1]["content"]
        q = data_block(user, "Q+") if '<data label="Q+">' in user else None
        if q is not None and hashlib.sha256(q.encode()).digest()[0] % 5 < 2:
            self.first[q] = {"positive_fits": (False, 0.99)}
            self.judge_fails[q] = "positive_fits"
        return super().respond(body)


def test_plan_prices_the_cascade_as_the_dry_run_does(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAIServer(responder=HashedScript().respond, usage=billed_as_estimated) as server:
        cfg = openai_cfg(server, **{"verify.cascade": True, "source.sample_queries": 10})
        run_until(cfg, "filter")
        cal, _ = calibrate_judge(PIPELINE, cfg)
        survival = cal["at_recommended"]["survival"]
        assert 0.3 <= survival <= 0.8, cal  # the script's ~40% confident failures
        # The pilot is the same 10 queries; it judges at the run's calibrated threshold (no
        # verify.cascade_threshold is set: without the run's calibration it could not judge at all).
        p = plan(PIPELINE, cfg, target=20, pilot=10)
        assert calibration_path(tmp_path / "runs/sample-pilot").is_file()
        # The dry run of the same rows, with a cache of its own (the run's answers would count as free).
        fresh = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"cache_path": str(tmp_path / "fresh.sqlite3")})})
        estimates = {e.stage: e for e in dry_run(PIPELINE, fresh, [s.name for s in PIPELINE.llm_stages()])}
    parts = {c["usage"]: c for c in p.parts}
    verify = estimates["verify"]
    first_est, judge_est = verify.parts
    rows = verify.rows
    assert p.pilot_candidates == rows == 10
    # The first judge answers every candidate, the reasoning judge only the share it lets through.
    assert parts["usage_verify_first"]["model"] == first_est.model == "gpt-4o-mini"
    assert parts["usage_verify_first"]["share"] == pytest.approx(first_est.calls / rows)
    assert parts["usage_verify"]["model"] == judge_est.model == "o3-mini"
    assert parts["usage_verify"]["share"] == pytest.approx(survival, abs=0.1 / rows)
    # Every part online and in batch, per candidate, against the dry run's figure for it.
    pairs = {"usage_generate": estimates["generate"], "usage_mine": estimates["mine"],
             "usage_verify_first": first_est, "usage_verify": judge_est}
    for usage, est in pairs.items():
        tol = JUDGE_TOLERANCE if usage == "usage_verify" else 1e-6
        assert parts[usage]["cost_per_candidate_usd"] == pytest.approx(est.cost_usd / rows, rel=tol), usage
        assert parts[usage]["batch_cost_per_candidate_usd"] == pytest.approx(est.batch_cost_usd / rows, rel=tol), usage
    total = sum(e.cost_usd for e in estimates.values())
    batch = sum(e.batch_cost_usd for e in estimates.values())
    assert p.cost_per_candidate_usd == pytest.approx(total / rows, rel=JUDGE_TOLERANCE)
    assert p.batch_cost_per_candidate_usd == pytest.approx(batch / rows, rel=JUDGE_TOLERANCE)
    text = "\n".join(describe(p))
    assert "verify_first (gpt-4o-mini)" in text and f"verify (o3-mini) ${parts['usage_verify']['cost_per_candidate_usd']:.5f}" in text


def test_plan_without_the_cascade_prices_the_judge_on_every_candidate(tmp_path, monkeypatch):
    """The verify table always has the cascade's usage column; off, it is empty and not a part."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAIServer(responder=HashedScript().respond, usage=billed_as_estimated) as server:
        p = plan(PIPELINE, openai_cfg(server, **{"source.sample_queries": 10}), target=20, pilot=10)
    parts = {c["usage"]: c for c in p.parts}
    assert sorted(parts) == ["usage_generate", "usage_mine", "usage_verify"]
    assert parts["usage_verify"]["share"] == 1.0 and parts["usage_verify"]["model"] == "o3-mini"
    assert p.batch_cost_per_candidate_usd == pytest.approx(p.cost_per_candidate_usd * PRICES.lookup("o3-mini").batch_discount)
    assert not any(line.startswith("per candidate:") for line in describe(p))  # one kind of request per stage
