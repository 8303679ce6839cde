"""A real run you can trust with your money: the run-wide budget across stages, kills and resumes;
estimates that count reasoning tokens; the recalibrated projection; progress in a log; status of
a running stage; `plan` and `build --target-accepted`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, make_config, run_infir
from pipeline.llm.budget import SpendLedger
from pipeline.llm.pricing import PriceTable
from pipeline.llm.prompts import load_prompt
from run_helpers import billing_server
from stage_helpers import run_until

KEY = "sk-test-run-budget"


def cli_args(srv, *extra: str, config: Path = REPO / "configs" / "sample.toml", source: Path = SAMPLE) -> list[str]:
    return ["--config", str(config), "--set", f'source.path="{source}"', "--backend", "openai",
            "--set", f'llm.base_url="{srv.base_url}"', "--set", "llm.concurrency=4", *extra]


def env() -> dict:
    return {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}


def spent(run: Path) -> dict:
    ledger = SpendLedger(run / "spend.sqlite3")
    try:
        return {"total": ledger.spent(), **ledger.by_label()}
    finally:
        ledger.close()


def _infir(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout)


# ---- the budget ------------------------------------------------------------------------------------


def _kill_when_answered(args: list[str], srv, target: int) -> tuple[int, list[str] | str]:
    """Start `infir build`, SIGKILL it once the server has written `target` chat answers (and at
    least one more than before this attempt) while a request is in flight. Returns (returncode,
    the models of the requests in flight at the kill), or (returncode, its stderr) if it ended by
    itself."""
    target = max(target, srv.answered() + 1)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", *args], env=env(),
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            while proc.poll() is None:
                in_flight = [r.body["model"] for r in srv.chat_requests() if r.finished is None]
                if srv.answered() >= target and in_flight:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return proc.returncode, in_flight
                time.sleep(0.002)
            err.seek(0)  # it ended by itself: the caller's assertion shows why
            return proc.returncode, err.read().decode()[-800:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_budget_holds_for_the_whole_run_across_resumes_and_kills(tmp_path):
    """`build --max-cost-usd X`, SIGKILLed three times while requests are in flight (in generate,
    mine and verify), then run to the cap: what the SERVER billed (every answer it made, read or
    not) stays within X plus the documented bound (README "Worst case above the cap", reliability.md
    "Requests in flight at a kill are paid twice"):
      - at the cap, the requests in flight finish: at most llm.concurrency x (the cost of one judge
        answer minus its reservation); the reservation is at least the judge's expected answer and
        reasoning (judge.md's expected_output_tokens + the price file's reasoning) at the output
        price, so the priciest judge answer less that;
      - each kill loses the answers in flight (paid, never recorded): at most llm.concurrency
        answers per kill, each at most the priciest answer of the models in flight at the kill.
    The issue's case paid $1.52 against a $0.50 cap."""
    cap, concurrency, queries = 0.30, 4, 60
    prices = PriceTable.load()
    with billing_server(latency=0.05) as srv:
        # 60 queries: 60 generate answers, 60 mine answers, then the judge (~$0.014 an answer) until
        # the cap. The kills: mid-generate, mid-mine and after ~10 judge answers (~$0.18 spent).
        args = cli_args(srv, "--max-cost-usd", str(cap), "--until", "verify",
                        "--set", f"source.sample_queries={queries}")
        killed = [_kill_when_answered(args, srv, target) for target in (25, queries + 30, 2 * queries + 10)]
        assert [rc for rc, _ in killed] == [-9, -9, -9], killed  # each kill landed: no attempt ended by itself
        assert "o3-mini" in killed[-1][1], killed  # the last one with judge requests (the costly ones) in flight
        done = _infir(["build", *args])
        assert done.returncode == 2, done.stderr[-800:]
        assert "stopped at the cost budget" in done.stderr and "the run has spent $" in done.stderr, done.stderr[-800:]
        billed = srv.billed_usd(prices.cost)
        priciest: dict[str, float] = {}
        for b in srv.bills:
            priciest[b.model] = max(priciest.get(b.model, 0.0), prices.cost(b.model, b.prompt, b.completion, b.cached))
        recorded = spent(tmp_path / "runs" / "sample")["total"]
        reserved_at_least = prices.cost("o3-mini", 0, load_prompt("judge").expected_output_tokens
                                        + prices.expected_reasoning("o3-mini", "medium"))
        past_the_cap = concurrency * (priciest["o3-mini"] - reserved_at_least)
        lost_to_kills = sum(concurrency * max(priciest[m] for m in models) for _, models in killed)
        assert billed <= cap + past_the_cap + lost_to_kills, (billed, cap, past_the_cap, lost_to_kills, priciest)
        assert recorded <= cap + past_the_cap, (recorded, cap, past_the_cap)
        # The kills did cost something the ledger never saw, and only that much.
        assert recorded < billed <= recorded + lost_to_kills + 1e-9, (recorded, billed, lost_to_kills)
        assert recorded >= cap - concurrency * priciest["o3-mini"], recorded  # it spent up to the cap
        # Raising the budget resumes: every paid answer is reused, the run finishes.
        judged = sum(1 for b in srv.bills if b.model == "o3-mini")
        done = _infir(["build", *cli_args(srv, "--max-cost-usd", "5", "--until", "verify",
                                          "--set", f"source.sample_queries={queries}")])
        assert done.returncode == 0, done.stderr[-800:]
        assert queries <= sum(1 for b in srv.bills if b.model == "o3-mini") <= judged + queries


def test_ledger_refuses_past_the_cap_and_drops_dead_reservations(tmp_path):
    ledger = SpendLedger(tmp_path / "spend.sqlite3", cap=1.0)
    r1 = ledger.reserve(0.6)
    assert r1 is not None and ledger.reserve(0.5) is None  # 0.6 held + 0.5 > 1.0
    ledger.settle(r1, 0.7, "generate")
    assert ledger.spent() == pytest.approx(0.7) and ledger.reserve(0.2) is not None
    # A reservation of a process that died is dropped by the next one who reserves.
    ledger._db.execute("INSERT INTO reserved (pid, usd, at) VALUES (?, ?, ?)", (2**22 + 12345, 0.25, 0.0))
    assert ledger.reserve(0.05) is not None
    held = ledger._db.execute("SELECT COUNT(*) FROM reserved WHERE pid = ?", (2**22 + 12345,)).fetchone()[0]
    assert held == 0
    assert ledger.by_label() == {"generate": pytest.approx(0.7)}


# ---- estimates ---------------------------------------------------------------------------------


SCHEMA_STAGE = {"GeneratedInstruction": "generate", "PoisonedPair": "mine", "JudgeVerdicts": "verify"}


def billed_by_stage(srv, prices: PriceTable) -> dict[str, dict[str, float]]:
    """What the server billed, per stage (told by the request's response schema): calls, prompt,
    visible and reasoning tokens, USD."""
    out: dict[str, dict[str, float]] = {}
    for b in srv.bills:
        stage = SCHEMA_STAGE[b.body["response_format"]["json_schema"]["name"]]
        t = out.setdefault(stage, {"calls": 0, "prompt": 0, "visible": 0, "reasoning": 0, "usd": 0.0})
        t["calls"] += 1
        t["prompt"] += b.prompt
        t["visible"] += b.completion - b.reasoning
        t["reasoning"] += b.reasoning
        t["usd"] += prices.cost(b.model, b.prompt, b.completion, b.cached)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    ("sample.toml", ()),
    ("msmarco.toml", ("--set", "source.sample_queries=150", "--set", "source.decontaminate=[]")),
])
def test_dry_run_estimate_against_the_bill_per_stage(tmp_path, config, extra, msmarco):
    """The dry run against what the server billed, stage by stage. The server counts tokens by its
    own rule (words x 1.3 plus punctuation, not the estimator's chars/4) and bills the judge's hidden
    reasoning from a lognormal whose mean (~2,050, run_helpers) is NOT the price file's assumption
    for o3-mini at medium effort (1,600). The estimate's error is split into named parts:
      - the reasoning assumption: reasoning tokens billed but not expected, at the output price;
      - the token count: chars/4 against the server's rule for the prompts, at the input price
        (11-26% fewer tokens on these prompts: the fallback's own error, as against tiktoken);
      - the rest (the prompts' expected_output_tokens against the answers, calls the dry run
        foresaw from stand-in rows): held within 10% of the bill."""
    source = SAMPLE if config == "sample.toml" else msmarco
    prices = PriceTable.load()
    assumed = prices.expected_reasoning("o3-mini", "medium")
    with billing_server() as srv:
        args = cli_args(srv, *extra, config=REPO / "configs" / config, source=source)
        est = _infir(["build", *args, "--dry-run", "--json"])
        assert est.returncode == 0, est.stderr[-800:]
        estimate = {s["stage"]: s for s in json.loads(est.stdout)["stages"]}
        done = _infir(["build", *args, "--until", "verify"])
        assert done.returncode == 0, done.stderr[-800:]
        billed = billed_by_stage(srv, prices)
    recorded = spent(next((tmp_path / "runs").iterdir()))
    assert set(billed) == set(estimate) == {"generate", "mine", "verify"}
    for stage, e in estimate.items():
        b, model = billed[stage], e["model"]
        assert recorded[stage] == pytest.approx(b["usd"])  # the ledger holds what the server billed
        # Every request foreseen; verify's from stand-in rows, of which a filter may drop a few.
        assert b["calls"] <= e["calls"] <= 1.02 * b["calls"], (stage, e["calls"], b["calls"])
        reasoning_part = prices.cost(model, 0, b["reasoning"] - e["reasoning_tokens"])
        if stage == "verify":
            assert e["reasoning_tokens"] == assumed * e["calls"]
            assert 1.15 * assumed <= b["reasoning"] / b["calls"] <= 1.45 * assumed  # not the assumption
            assert reasoning_part >= 0.10 * b["usd"], (reasoning_part, b["usd"])  # the largest part
        else:
            assert e["reasoning_tokens"] == b["reasoning"] == 0
        assert abs(e["prompt_tokens"] - b["prompt"]) <= 0.30 * b["prompt"], (stage, e["prompt_tokens"], b)
        count_part = prices.cost(model, b["prompt"] - e["prompt_tokens"], 0)
        rest = b["usd"] - (e["cost_usd"] + reasoning_part + count_part)
        assert abs(rest) <= 0.10 * b["usd"], (
            stage, f"estimate ${e['cost_usd']:.4f}, billed ${b['usd']:.4f}: reasoning assumption "
                   f"${reasoning_part:.4f}, token count ${count_part:.4f}, rest ${rest:.4f}")


@pytest.mark.slow
def test_projection_after_a_tenth_of_a_stage_is_within_10_percent(tmp_path, monkeypatch):
    """The progress projection recalibrates from the stage's own answers (reasoning included)."""
    from pipeline.runner import watch as watch_mod

    seen: dict[str, float] = {}
    real = watch_mod.StageWatch.on_result

    def spy(self, result):
        real(self, result)
        if self.name not in seen and self.total and self.done >= 0.1 * self.total:
            seen[self.name] = self.figures(with_run=False)["projected_stage_usd"]

    monkeypatch.setattr(watch_mod.StageWatch, "on_result", spy)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with billing_server() as srv:
        cfg = make_config(**{"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.concurrency": 4,
                             "generate.shard_rows": 30, "mine.shard_rows": 30, "verify.shard_rows": 30})
        run_until(cfg, "verify")
    actual = spent(tmp_path / "runs" / "sample")
    for stage in ("generate", "mine", "verify"):
        assert abs(seen[stage] - actual[stage]) <= 0.10 * actual[stage], (stage, seen[stage], actual[stage])


# ---- progress and status -----------------------------------------------------------------------


def test_progress_lines_in_a_log_at_the_configured_interval(tmp_path):
    interval = 0.3
    with billing_server(latency=0.05) as srv:
        done = _infir(["build", *cli_args(srv, "--set", f"run.progress_interval_s={interval}",
                                                                    "--until", "generate")])
    assert done.returncode == 0, done.stderr[-800:]
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("[progress] generate:")]
    elapsed = float(lines[-1].rsplit("elapsed ", 1)[1].split("s", 1)[0])
    # A line per interval while the rows ran, and a last one at the end. Counted loosely (half the
    # intervals) so that a loaded machine delaying the printing thread does not fail the test.
    assert len(lines) >= 2 and len(lines) >= 0.5 * elapsed / interval, (len(lines), elapsed)
    assert lines[-1].endswith("(done)") and "146/146 rows" in lines[-1]
    assert "projected $" in lines[-1] and "ETA" in lines[-1] and "reasoning" in lines[-1]


def test_status_tells_a_running_stage_from_an_interrupted_one(tmp_path):
    rc, _, err = run_infir("source", "--set", f'source.path="{SAMPLE}"')
    assert rc == 0, err
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.store.lock import StageLock\n"
         "with StageLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", "runs/sample/generate"],
        env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, out, err = run_infir("status", "runs/sample")
        assert rc == 0 and f"running (pid {holder.pid})" in out + err, out + err
    finally:
        holder.kill()
        holder.wait()
    Path("runs/sample/generate/_STATE.json").write_text('{"inputs": {}}')
    rc, out, err = run_infir("status", "runs/sample")
    assert rc == 0 and "interrupted (0 shard(s) kept)" in out + err


def test_status_counts_failed_rows_and_spend_against_the_budget(tmp_path):
    rc, _, err = run_infir("build", "--set", f'source.path="{SAMPLE}"', "--until", "verify", "--set", "llm.max_cost_usd=2.5")
    assert rc == 0, err
    marker = Path("runs/sample/verify/_SUCCESS.json")
    record = json.loads(marker.read_text())
    record["shards"][0]["failed"] = 3
    record["summary"]["failed"] = 3
    marker.write_text(json.dumps(record))
    rc, out, err = run_infir("status", "runs/sample")
    text = out + err
    assert rc == 0 and "done, 3 failed (rerun retries them)" in text, text
    assert "run budget: spent $0.0000 of $2.50 budget" in text and "rejected" in text


# ---- plan ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plan_then_build_to_a_target_of_accepted_rows(tmp_path, msmarco):
    extra = ("--set", "source.decontaminate=[]", "--set", "llm.concurrency=16")
    with billing_server() as srv:
        args = cli_args(srv, *extra, config=REPO / "configs" / "msmarco.toml", source=msmarco)
        planned = _infir(["plan", *args, "--target-accepted", "500", "--pilot", "150", "--json"])
        assert planned.returncode == 0, planned.stderr[-800:]
        p = json.loads(planned.stdout)
        assert p["queries_needed_low"] <= p["queries_needed"] <= p["queries_needed_high"] <= p["queries_available"]
        assert p["cost_low_usd"] <= p["cost_usd"] <= p["cost_high_usd"] and p["batch_cost_usd"] < p["cost_usd"]
        pilot_requests = srv.count
        built = _infir(["build", *args, "--target-accepted", "500", "--pilot", "150", "--until", "verify"])
        assert built.returncode == 0, built.stderr[-800:]
        assert srv.count > pilot_requests
    summary = json.loads((tmp_path / "runs/msmarco/verify/_SUCCESS.json").read_text())["summary"]
    assert summary["accepted"] >= 500, summary["accepted"]
    assert f"sampling {p['queries_needed_high']:,} source queries" in built.stderr
    # The bill of the rows the run holds, as they record it, is within the projection's interval
    # for the queries it sampled (the pilot's rows came from the cache: paid once).
    cost = sum(spent(tmp_path / "runs" / name)["total"] for name in ("msmarco", "msmarco-pilot"))
    per_query = p["cost_usd"] / p["queries_needed"]
    assert 0.75 * per_query * p["queries_needed_high"] <= cost <= 1.25 * per_query * p["queries_needed_high"], cost
