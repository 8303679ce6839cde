"""`infir build`, streamed (runner/stream.py): the row stages run at once, and the output is the bytes of a
stage-by-stage build: offline and against the local OpenAI-compatible server, after ten kill -9s at
random points, and when the build-wide budget stops it mid-stream."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from openai_server import FakeOpenAIServer
from pipeline.llm.pricing import PriceTable
from reliability_helpers import KEY_ENV, child_env, infir_args, infir_cmd, kill9, responder, run, settle, stage_of, tree_bytes

QUERIES = 40
SHARDS = 5  # rows per shard in every row stage: 8 chunks flow through each stage
CONCURRENCY = 4
LLM_STAGES = ("generate", "mine", "verify")  # each has its own client: up to 3 x CONCURRENCY in flight
RELEASE = Path("releases/inf-ir-sample/1.0.0")
ROW_STAGES = ("generate", "mine", "filter", "verify")


def _args(server, msmarco, *extra: str) -> list[str]:
    return infir_args("build", server.base_url, msmarco, queries=QUERIES, concurrency=CONCURRENCY,
                      shard_rows=SHARDS) + ["--until", "write", *extra]


def _stage_files(root: Path, *attempt: str) -> dict[str, object]:
    """Every stage's shards and its `_SUCCESS.json` but the seconds it took (and the `attempt` keys:
    a resumed stage's summary counts what that attempt did, shards resumed and cache hits)."""
    out: dict[str, object] = {}
    for stage in ("source", *ROW_STAGES):
        d = root / "runs/sample" / stage
        out.update({f"{stage}/{k}": v for k, v in tree_bytes(d, "*.parquet").items()})
        success = json.loads((d / "_SUCCESS.json").read_text())
        for key in ("seconds", *attempt):
            success.pop(key)
        out[f"{stage}/_SUCCESS.json"] = success
    return out


@pytest.fixture(scope="module")
def env():
    return child_env(**{KEY_ENV: "sk-test-stream-1a2b3c", "SOURCE_DATE_EPOCH": "1700000000"})


@pytest.fixture(scope="module")
def builds(tmp_path_factory, env):
    """The same build stage by stage (A) and streamed (B), against one server, with their requests."""
    from conftest import require_msmarco

    msmarco = require_msmarco()
    a, b = tmp_path_factory.mktemp("stage-by-stage"), tmp_path_factory.mktemp("streamed")
    with FakeOpenAIServer(responder=responder, latency=0.02) as server:
        done = run(_args(server, msmarco, "--no-stream"), a, env)
        assert done.returncode == 0, done.stderr[-2000:]
        settle(server, 0.05)
        n_a = len(server.chat_requests())
        done = run(_args(server, msmarco), b, env)
        assert done.returncode == 0, done.stderr[-2000:]
        settle(server, 0.05)
        requests = server.chat_requests()[n_a:]
    return {"a": a, "b": b, "msmarco": msmarco, "requests_a": n_a, "requests_b": requests}


@pytest.mark.slow
def test_streamed_build_writes_the_bytes_of_a_stage_by_stage_build(builds):
    a, b = builds["a"], builds["b"]
    release = tree_bytes(a / RELEASE)
    assert any(k.startswith("data/") for k in release)
    assert tree_bytes(b / RELEASE) == release
    files_a, files_b = _stage_files(a), _stage_files(b)
    assert sum(1 for k in files_a if k.startswith("verify/part-")) == QUERIES // SHARDS
    assert files_a == files_b
    assert len(builds["requests_b"]) == builds["requests_a"]  # each stage's requests, once


@pytest.mark.slow
def test_streamed_stages_run_at_once(builds):
    """The judge's first request comes before generate's last: chunk k went on while later ones were made."""
    by_stage: dict[str, list[float]] = {}
    for r in builds["requests_b"]:
        by_stage.setdefault(stage_of(r.body), []).append(r.arrived)
    assert set(by_stage) >= set(LLM_STAGES), set(by_stage)
    assert min(by_stage["verify"]) < max(by_stage["generate"])
    assert min(by_stage["mine"]) < max(by_stage["generate"])


def test_streamed_build_offline_gives_the_stage_by_stage_bytes(tmp_path):
    """The bundled sample with the offline backend, in small shards, both ways."""
    sets = ["--set", "generate.shard_rows=20", "--set", "mine.shard_rows=15", "--set", "filter.shard_rows=30",
            "--set", "verify.shard_rows=25"]
    env = child_env(SOURCE_DATE_EPOCH="1700000000")
    repo = Path(__file__).resolve().parents[2]  # the sample config reads data/sample from there
    trees = []
    for name, flag in (("a", "--no-stream"), ("b", "--stream")):
        root = tmp_path / name
        where = ["--set", f"run.runs_dir={root / 'runs'}", "--set", f"write.releases_dir={root / 'releases'}",
                 "--set", f"llm.cache_path={root / 'llm.sqlite3'}"]
        done = run(["build", "--config", "configs/sample.toml", *sets, *where, flag, "--until", "write"], repo, env)
        assert done.returncode == 0, done.stderr[-2000:]
        trees.append((tree_bytes(root / RELEASE), _stage_files(root)))
    assert trees[0][0] and trees[0] == trees[1]


@pytest.mark.slow
def test_ten_kills_of_a_streamed_build_give_the_same_release(builds, env, tmp_path):
    """Ten SIGKILLs at seeded random points (a random number of the server's answers into the build,
    plus up to 15 ms), each followed by a rerun (the next attempt): the uninterrupted release, and no
    more requests sent again per kill than the three LLM stages can have in flight."""
    rng = random.Random(2027)
    total = builds["requests_a"]  # chat requests of an uninterrupted build
    kills = 0
    with FakeOpenAIServer(responder=responder, latency=0.02) as server:
        args = _args(server, builds["msmarco"])
        for target in sorted(rng.sample(range(2, total - 3 * CONCURRENCY), 10)):
            settle(server, 0.05)
            goal = max(target, len(server.chat_requests()) + 1)
            proc = subprocess.Popen(infir_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            try:
                while proc.poll() is None and len(server.chat_requests()) < goal:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.015))
                landed = kill9(proc)
                assert landed or proc.returncode == 0, proc.stderr.read().decode()[-2000:]
                kills += landed
            finally:
                proc.stderr.close()
            if not landed:
                break
        done = run(args, tmp_path, env)
        assert done.returncode == 0, done.stderr[-2000:]
        settle(server, 0.05)
        sent = len(server.chat_requests())
    assert kills >= 8, kills
    assert tree_bytes(tmp_path / RELEASE) == tree_bytes(builds["a"] / RELEASE)
    assert _stage_files(tmp_path, "summary") == _stage_files(builds["a"], "summary")
    # Only requests in flight at a kill are sent again: their answers never reached the cache.
    assert 0 <= sent - total <= kills * len(LLM_STAGES) * CONCURRENCY, (sent, total, kills)


@pytest.mark.slow
def test_build_wide_budget_holds_while_stages_spend_at_once(builds, env, tmp_path):
    """A cap of 40% of the build's cost stops the streamed build mid-way: exit 2 with the budget line;
    what the run recorded and what the server billed are at most the cap plus what the three clients
    can have in flight beyond their reservations (each: llm.concurrency answers at their max tokens,
    README "A real run"), and at least the cap less one request: the stages' reservations in flight
    make a request wait for them to settle, not stop the build."""
    from pipeline.llm.budget import SpendLedger

    prices = PriceTable.load()
    ledger = SpendLedger(builds["a"] / "runs/sample/spend.sqlite3")
    full = ledger.spent()
    ledger.close()
    cap = round(0.4 * full, 6)
    with FakeOpenAIServer(responder=responder, latency=0.02) as srv:
        done = run(_args(srv, builds["msmarco"], "--max-cost-usd", str(cap)), tmp_path, env)
        settle(srv, 0.05)
        billed = srv.billed_usd(prices.cost)
        stages = {stage_of(r.body) for r in srv.chat_requests()}
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # a stopped stage (README, Exit status)
    assert "stopped at the cost budget" in done.stderr
    ledger = SpendLedger(tmp_path / "runs/sample/spend.sqlite3")
    recorded = ledger.spent()
    ledger.close()
    assert stages >= {"generate", "mine"}, stages  # it stopped while more than one stage was spending
    # One answer at its max tokens, with a prompt of 4,000 tokens (the prompts here are ~1-2k).
    one = {s: prices.cost(m, 4000, t, 0) for s, m, t in
           (("generate", "gpt-4o-mini", 300), ("mine", "gpt-4o-mini", 900), ("verify", "o3-mini", 4000))}
    bound = cap + CONCURRENCY * sum(one.values())
    assert recorded <= bound and billed <= bound, (recorded, billed, cap, bound)
    # Stopped by the cap, not by the reservations of three stages in flight: what it could not send
    # would not have fit even with nothing reserved (no request costs more than `one` of its stage).
    assert recorded >= cap - max(one.values()), (recorded, cap)
    assert recorded == pytest.approx(billed, rel=0.02)


@pytest.mark.slow
def test_status_and_progress_show_every_running_stage(builds, env, tmp_path):
    """While a streamed build runs, `infir status` shows more than one stage running, each with the pid
    holding it, and the log has plain progress lines of a later stage before an earlier one is done."""
    log = tmp_path / "build.log"
    with FakeOpenAIServer(responder=responder, latency=0.1) as server:
        args = _args(server, builds["msmarco"], "--set", "run.progress_interval_s=0.2")
        with log.open("w") as err:
            proc = subprocess.Popen(infir_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
            running: list[str] = []
            try:
                while proc.poll() is None and len(running) < 2:
                    shown = run(["status", "runs/sample"], tmp_path, env)
                    running = [ln for ln in shown.stdout.splitlines() if f"running (pid {proc.pid}" in ln]
                    time.sleep(0.1)
                assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
            finally:
                if proc.poll() is None:
                    kill9(proc)
    assert len(running) >= 2, running
    lines = log.read_text().splitlines()
    first_verify = next(i for i, ln in enumerate(lines) if ln.startswith("[progress] verify:"))
    generate_done = next(i for i, ln in enumerate(lines) if ln.startswith("[progress] generate:") and ln.endswith("(done)"))
    assert first_verify < generate_done


@pytest.mark.slow
def test_a_kill_after_an_upstream_finished_resumes_its_downstream(builds, env, tmp_path):
    """Killed once generate has finished but mine has not (its shards written while generate was still
    being written: input `STREAMED`): the rerun reads the finished generate and keeps mine's shards by
    their input rows, to the same bytes."""
    run_dir = tmp_path / "runs/sample"
    with FakeOpenAIServer(responder=responder, latency=0.05) as server:
        args = _args(server, builds["msmarco"])
        proc = subprocess.Popen(infir_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while proc.poll() is None and not (run_dir / "generate/_SUCCESS.json").is_file():
                time.sleep(0.002)
            assert kill9(proc), proc.stderr.read().decode()[-2000:]
        finally:
            proc.stderr.close()
        state = json.loads((run_dir / "mine/_STATE.json").read_text())
        assert state["input_fingerprint"] == "streamed" and state["inputs"], state
        assert not (run_dir / "mine/_SUCCESS.json").exists()
        done = run(args, tmp_path, env)
        assert done.returncode == 0, done.stderr[-2000:]
    assert tree_bytes(tmp_path / RELEASE) == tree_bytes(builds["a"] / RELEASE)
    assert _stage_files(tmp_path, "summary") == _stage_files(builds["a"], "summary")
    mine = json.loads((run_dir / "mine/_SUCCESS.json").read_text())
    assert mine["summary"]["shards resumed"] >= 1  # kept, not redone
