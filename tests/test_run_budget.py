"""A real run you can trust with your money: the run-wide budget across stages, kills and resumes;
estimates that count reasoning tokens; the recalibrated projection; progress in a log; status of
a running stage; `plan` and `build --target-accepted`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, make_config, run_infir
from pipeline.llm.budget import SpendLedger
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


@pytest.mark.slow
def test_budget_holds_for_the_whole_run_across_resumes_and_kills(tmp_path):
    """`build --max-cost-usd X` repeated (one attempt killed with SIGKILL mid-stage) never takes the
    run's recorded spend past X plus the stated bound: the requests in flight (llm.concurrency) each
    costing at most the priciest answer seen. The issue's case paid $1.52 against a $0.50 cap."""
    cap = 0.60
    with billing_server(latency=0.02) as srv:
        args = cli_args(srv, "--max-cost-usd", str(cap), "--until", "verify")
        run = tmp_path / "runs" / "sample"
        totals, outcomes = [], []
        for attempt in range(4):
            if attempt == 1:  # killed mid-stage: once the server has answered a few more requests
                before = srv.count
                proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", *args], env=env(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while srv.count < before + 20 and proc.poll() is None:
                    time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                outcomes.append("killed")
            else:
                done = _infir(["build", *args])
                outcomes.append(done.returncode)
                if done.returncode:
                    assert "stopped at the cost budget" in done.stderr and "the run has spent $" in done.stderr, done.stderr[-800:]
            totals.append(spent(run)["total"])
        ledger = SpendLedger(run / "spend.sqlite3")
        priciest = ledger._db.execute("SELECT MAX(usd) FROM spend").fetchone()[0]
        ledger.close()
        bound = 4 * priciest  # llm.concurrency answers in flight beyond their reservations
        assert outcomes[0] == 2 and outcomes[2] == 2 and outcomes[3] == 2, outcomes  # each stops at the cap
        assert all(t <= cap + bound for t in totals), (totals, cap, bound)
        assert totals[-1] >= cap - bound  # it did spend up to the cap, not stop early
        # Raising the budget resumes: every paid answer is reused, the run finishes.
        done = _infir(["build", *cli_args(srv, "--max-cost-usd", "5", "--until", "verify")])
        assert done.returncode == 0, done.stderr[-800:]
        assert spent(run)["total"] <= 5


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


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    ("sample.toml", ()),
    ("msmarco.toml", ("--set", "source.sample_queries=150", "--set", "source.decontaminate=[]")),
])
def test_dry_run_estimate_within_25_percent_of_the_bill_per_stage(tmp_path, config, extra, msmarco):
    source = SAMPLE if config == "sample.toml" else msmarco
    with billing_server() as srv:
        args = cli_args(srv, *extra, config=REPO / "configs" / config, source=source)
        est = _infir(["build", *args, "--dry-run", "--json"])
        assert est.returncode == 0, est.stderr[-800:]
        estimate = json.loads(est.stdout)
        done = _infir(["build", *args, "--until", "verify"])
        assert done.returncode == 0, done.stderr[-800:]
    run = next((tmp_path / "runs").iterdir())
    actual = spent(run)
    by_stage = {s["stage"]: s for s in estimate["stages"]}
    assert by_stage["verify"]["reasoning_tokens"] > by_stage["verify"]["completion_tokens"] / 2  # the bulk of the bill
    for stage, e in by_stage.items():
        assert actual[stage] > 0 and abs(e["cost_usd"] - actual[stage]) <= 0.25 * actual[stage], (stage, e, actual)


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
