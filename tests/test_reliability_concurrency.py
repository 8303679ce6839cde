"""Two `infir` processes at once: on the same run and stage the second refuses with a clear message
and the first finishes uncorrupted; where sharing is safe (a release, one LLM cache for two runs)
both finish and agree."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import threading
import time

import pyarrow.parquet as pq
import pytest

from openai_server import FakeOpenAIServer
from pipeline.llm.cache import Cache
from pipeline.release import verify_release
from pipeline.store.lock import StageLock
from stage_helpers import names_between
from reliability_helpers import KEY_ENV, child_env, infir_args, infir_cmd, responder, run, tree_bytes

QUERIES = 40


@pytest.fixture
def server():
    with FakeOpenAIServer(responder=responder, latency=0.02) as srv:
        yield srv


def _args(stage, server, msmarco, run_name="sample"):
    return infir_args(stage, server.base_url, msmarco, queries=QUERIES, concurrency=2) + ["--run", run_name]


def test_second_process_on_the_same_stage_refuses_and_the_first_is_intact(tmp_path, server, msmarco):
    env = child_env(**{KEY_ENV: "sk-test-concurrency"})
    assert run(_args("source", server, msmarco), tmp_path, env).returncode == 0
    # The server holds its answers until the other commands have had their turn, so the first
    # process is surely mid-stage (holding the lock, requests in flight) while they run.
    gate = threading.Event()
    server.responder = lambda body: (gate.wait(120), responder(body))[1]
    first = subprocess.Popen(infir_cmd(*_args("generate", server, msmarco)), cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.wait_for_count(2, timeout=120), "the first process never started sending"  # 2 = concurrency
        saved = (tmp_path / "runs/sample/config.toml").read_text()
        second = run(_args("generate", server, msmarco) + ["--set", "generate.temperature=0.9"], tmp_path, env)
        assert first.poll() is None, "the first process ended before the second one started"
        # The refused process, with other settings, left the run's saved config alone.
        assert (tmp_path / "runs/sample/config.toml").read_text() == saved
        assert second.returncode == 2, second.stderr
        assert f"runs/sample/generate: stage is being written by pid {first.pid}; wait for it or stop it" in second.stderr
        assert "Traceback" not in second.stderr
        # `build` meets the same lock at the first stage still being written.
        build = run(["build", *_args("generate", server, msmarco)[1:], "--until", "mine"], tmp_path, env)
        assert build.returncode == 2 and "stage is being written by pid" in build.stderr, build.stderr
        assert first.poll() is None
    finally:
        gate.set()
        first.wait(timeout=300)
        err = first.stderr.read()
        first.stderr.close()
    assert first.returncode == 0, err
    table = pq.read_table(tmp_path / "runs/sample/generate")
    assert table.num_rows == QUERIES and table.column("generate_error").null_count == QUERIES
    assert server.count == QUERIES  # the refused processes sent nothing


def test_train_refuses_while_another_process_trains(tmp_path, msmarco):
    # The train stage takes the same lock before it loads anything heavy.
    with StageLock(tmp_path / "runs/sample/train"):
        done = run(["train", "--set", f'source.path="{msmarco}"'], tmp_path, child_env())
    assert done.returncode == 2 and "runs/sample/train: stage is being written by pid" in done.stderr, done.stderr


@pytest.mark.slow
def test_two_runs_at_once_share_one_cache_and_write_one_release(tmp_path, server, msmarco):
    """`infir build` of two runs at the same time: one SQLite cache, and the same release content
    (a run's name is not part of it), so both write releases/inf-ir-sample/1.0.0."""
    env = child_env(**{KEY_ENV: "sk-test-concurrency"})
    procs = [
        subprocess.Popen(infir_cmd("build", *_args("source", server, msmarco, r)[1:], "--until", "write"),
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for r in ("one", "two")
    ]
    errs = []
    for p in procs:
        p.wait(timeout=300)
        errs.append(p.stderr.read())
        p.stderr.close()
    assert [p.returncode for p in procs] == [0, 0], errs
    for stage in names_between("source", "verify"):
        one = tree_bytes(tmp_path / "runs/one" / stage, "*.parquet")
        assert one and one == tree_bytes(tmp_path / "runs/two" / stage, "*.parquet"), stage
    con = sqlite3.connect(tmp_path / ".cache/llm.sqlite3")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 3 * QUERIES
    con.close()
    versions = list((tmp_path / "releases/inf-ir-sample").iterdir())
    assert [p.name for p in versions] == ["1.0.0"], versions
    assert verify_release(versions[0]).rows > 0
    # The cache's in-flight claims: one run's requests, give or take a claim that expired (none here).
    assert 3 * QUERIES <= server.count <= 1.05 * 3 * QUERIES


def test_two_processes_on_one_cache_send_each_request_once(tmp_path, server, msmarco):
    """Two runs' `generate` started together on one cache: in-flight claims in the cache make the
    second process wait for the first one's answer instead of paying for the same request again."""
    env = child_env(**{KEY_ENV: "sk-test-concurrency"})
    for r in ("one", "two"):
        assert run(_args("source", server, msmarco, r), tmp_path, env).returncode == 0
    # Both processes are started before any answer comes back, so that they meet every request.
    gate = threading.Event()
    server.responder = lambda body: (gate.wait(60), responder(body))[1]
    procs = [subprocess.Popen(infir_cmd(*_args("generate", server, msmarco, r)), cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in ("one", "two")]
    errs = []
    try:
        assert server.wait_for_count(2, timeout=60)
        # Hold the answers until the second process is inside its stage too, and a little longer:
        # without claims it sends its own copies now (the count passes 2); with them it waits.
        # (The count below does not depend on this timing; only how surely a regression shows.)
        for _ in range(600):
            if (tmp_path / "runs/two/generate").exists():
                break
            time.sleep(0.1)
        time.sleep(2.0)
    finally:
        gate.set()
        for p in procs:
            p.wait(timeout=300)
            errs.append(p.stderr.read())
            p.stderr.close()
    assert [p.returncode for p in procs] == [0, 0], errs
    one = tree_bytes(tmp_path / "runs/one/generate", "*.parquet")
    assert one and one == tree_bytes(tmp_path / "runs/two/generate", "*.parquet")
    assert server.count == QUERIES  # each request sent once, by one of the two
    con = sqlite3.connect(tmp_path / ".cache/llm.sqlite3")
    assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim ended
    con.close()


def _claim_now(cache: Cache, key: str, ttl_s: float = 60.0):
    return asyncio.run(asyncio.wait_for(cache.claim_or_wait(key, ttl_s), timeout=30))


def test_cache_claims_wait_for_a_live_owner_and_take_over_a_dead_or_expired_one(tmp_path):
    path = tmp_path / "llm.sqlite3"
    with Cache(path) as a, Cache(path) as b:
        assert _claim_now(a, "k1") is None  # a holds the claim: a sends
        answer = {"id": "r1", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

        async def b_waits_while_a_answers():
            waiter = asyncio.ensure_future(b.claim_or_wait("k1", 60.0))
            await asyncio.sleep(0.3)
            assert not waiter.done()  # a live claim: b waits instead of sending
            a.put("k1", answer, "m")
            return await asyncio.wait_for(waiter, timeout=30)

        assert asyncio.run(b_waits_while_a_answers()) == answer
        # A failed request releases its claim: the other process may try at once.
        assert _claim_now(a, "k2") is None
        a.release("k2")
        assert _claim_now(b, "k2") is None
        # The owner died (kill -9: its pid is gone) or went silent past the expiry: taken over.
        dead = subprocess.Popen(["true"])
        dead.wait()
        con = sqlite3.connect(path)
        with con:
            con.execute("INSERT INTO claims VALUES ('k3', ?, ?)", (f"{socket.gethostname()}:{dead.pid}:x", time.time() + 3600))
            con.execute("INSERT INTO claims VALUES ('k4', 'elsewhere:1:x', ?)", (time.time() - 1,))
        assert _claim_now(b, "k3") is None and _claim_now(b, "k4") is None
        assert {o for (o,) in con.execute("SELECT owner FROM claims")} == {b.owner}
        con.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # close() ends a process's claims
    con.close()
