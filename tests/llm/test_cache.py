"""The persistent cache: hits cost no HTTP request, every input of the request changes the key,
it survives kill -9, and its file is private."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from llm_fixtures import (  # noqa: E402,F401
    PROMPT_TEXT,
    REPO,
    TESTS,
    Verdict,
    VerdictV2,
    api_key,
    make_tasks,
    settings_for,
    write_prompt,
)
from openai_server import FakeOpenAIServer, conversation_seed, default_content  # noqa: E402
from pipeline.llm import Cache, build_body, cache_key, load_prompt, make_client  # noqa: E402


def test_cache_hit_and_each_input_misses(tmp_path, api_key):
    pdir = tmp_path / "prompts"
    prompt = write_prompt(pdir)
    task = make_tasks(prompt, 1)[0]
    with FakeOpenAIServer() as srv:
        s = settings_for(srv, tmp_path)
        c1 = make_client(s)
        r1 = c1.run([task])[0]
        c1.close()
        assert r1.ok and not r1.cached and r1.http_calls == 1 and srv.count == 1

        # A new client (a rerun) on the same cache file: served from cache, 0 HTTP requests.
        c2 = make_client(s)
        r2 = c2.run([task])[0]
        assert srv.count == 1
        assert r2.ok and r2.cached and r2.http_calls == 0 and r2.cost_usd == 0.0
        assert r2.value == r1.value and r2.cache_key == r1.cache_key
        assert c2.totals.cache_hits == 1 and c2.totals.http_calls == 0
        assert c2.totals.saved_cost_usd > 0

        # Each input of the request misses: prompt text (file edited in place), model, a
        # parameter, the output schema.
        (pdir / "judge.md").write_text(PROMPT_TEXT.replace("You judge", "You carefully judge"), encoding="utf-8")
        variants = {
            "prompt": replace(task, prompt=load_prompt("judge", pdir)),
            "model": replace(task, model="gpt-4.1-mini"),
            "param": replace(task, params={**task.params, "temperature": 0.5}),
            "schema": replace(task, output_model=VerdictV2),
        }
        keys = {r1.cache_key}
        for name, t in variants.items():
            before = srv.count
            r = c2.run([t])[0]
            assert r.ok and not r.cached, name
            assert srv.count == before + 1, name
            keys.add(r.cache_key)
        assert len(keys) == 5
        assert isinstance(c2.run([variants["schema"]])[0].value, VerdictV2)

        # ...and each variant is now a hit.
        before = srv.count
        again = c2.run(list(variants.values()))
        assert srv.count == before and all(r.cached and r.ok for r in again)
        assert c2.cache.hits(r1.cache_key) == 1
        c2.close()


def test_cache_key_ignores_int_float_spelling_and_task_id(tmp_path):
    prompt = write_prompt(tmp_path)
    t = make_tasks(prompt, 1, params={"temperature": 0, "max_tokens": 100})[0]
    u = replace(t, key_id="other", params={"temperature": 0.0, "max_tokens": 100})
    assert cache_key(build_body(t)) == cache_key(build_body(u))
    assert cache_key(build_body(t)).startswith("v1:") and len(cache_key(build_body(t))) == 3 + 64


def test_identical_requests_in_one_run_are_sent_once(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    t = make_tasks(prompt, 1)[0]
    dupes = [replace(t, key_id=f"d{i}") for i in range(5)]
    with FakeOpenAIServer(latency=0.05) as srv:
        c = make_client(settings_for(srv, tmp_path))
        rs = c.run(dupes)
        assert srv.count == 1
        assert [r.key_id for r in rs] == [f"d{i}" for i in range(5)]
        assert all(r.ok for r in rs) and len({r.value.label for r in rs}) == 1
        assert sum(r.http_calls for r in rs) == 1
        c.close()


def test_cache_file_private_and_stats(tmp_path):
    path = tmp_path / "sub" / "c.sqlite3"
    with Cache(path) as cache:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        resp = {"model": "m", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
        cache.put("v1:a", resp)
        assert cache.get("v1:a") == resp and cache.get("v1:a") == resp
        assert cache.get("v1:missing") is None
        assert cache.contains_many(["v1:a", "v1:b"]) == {"v1:a"}
        st = cache.stats()
        assert st["entries"] == 1 and st["hits"] == 2 and st["path"] == str(path)
        assert st["prompt_tokens"] == 7 and st["completion_tokens"] == 3 and st["size_bytes"] > 0
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT key, model, hits FROM responses").fetchall() == [("v1:a", "m", 2)]
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600
    con.close()


def test_kill9_mid_batch_then_resume(tmp_path, api_key):
    n, conc = 200, 8
    pdir = tmp_path / "prompts"
    write_prompt(pdir)
    cache = tmp_path / "cache.sqlite3"
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with FakeOpenAIServer(latency=0.05) as srv:
        cmd = [sys.executable, str(TESTS / "llm_fixtures.py"), "child", "--base-url", srv.base_url,
               "--cache", str(cache), "--prompts-dir", str(pdir), "--n", str(n),
               "--concurrency", str(conc), "--out", str(out)]
        proc = subprocess.Popen(cmd, env=env)
        try:
            assert srv.wait_for_count(60, timeout=60), "child never got going"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # Requests the child wrote just before dying may still sit in socket buffers: let the
        # server read them before counting.
        first = -1
        while srv.count != first:
            first = srv.count
            time.sleep(0.3)
        assert 60 <= first < n
        assert not out.exists()

        # The cache is a valid database holding every response completed before the kill
        # (at most `conc` were in flight).
        con = sqlite3.connect(cache)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        entries = con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        con.close()
        assert first - conc <= entries <= first

        done = subprocess.run(cmd, env=env, timeout=120)
        assert done.returncode == 0
        data = json.loads(out.read_text())
        rows = data["results"]
        assert [r["key_id"] for r in rows] == [str(i) for i in range(n)]
        assert all(r["ok"] for r in rows)
        assert sum(r["cached"] for r in rows) == entries
        assert srv.count <= n + conc
        assert data["totals"]["http_calls"] == srv.count - first
        # Values are the server's answers for those exact requests.
        prompt = load_prompt("judge", pdir)
        for t, r in zip(make_tasks(prompt, n)[:5], rows[:5]):
            assert r["value"] == json.loads(default_content(build_body(t)))
        assert len({conversation_seed(build_body(t)) for t in make_tasks(prompt, n)}) == n


# -- only usable answers are kept (pipeline/llm/completion.py) --------------------------------------

GOOD = {"model": "m", "choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


def test_put_refuses_what_is_not_an_answer_and_reads_drop_a_bad_row(tmp_path):
    path = tmp_path / "c.sqlite3"
    with Cache(path) as cache:
        assert cache.put_many([("v1:good", GOOD, None), ("v1:bad", {"choices": "x"}, None)]) == 1
        assert cache.contains_many(["v1:good", "v1:bad"]) == {"v1:good"}
        con = sqlite3.connect(path)
        with con:
            con.executemany("INSERT INTO responses(key, model, response, created_at) VALUES (?, 'm', ?, 0)",
                            [("v1:a", "not json {"), ("v1:b", '{"choices":[{"message":{"content":5}}]}')])
        assert cache.get("v1:a") is None and cache.dropped == 1  # dropped, counted, no hit
        assert cache.peek_many(["v1:good", "v1:b"]) == {"v1:good": GOOD} and cache.dropped == 2
        assert {k for (k,) in con.execute("SELECT key FROM responses")} == {"v1:good"}
        con.close()
        assert cache.get("v1:good") == GOOD and cache.dropped == 2 and cache.hits("v1:good") == 1


def test_a_live_owner_that_renews_keeps_its_claim_past_the_ttl(tmp_path):
    """The news rule (no change of the claim row for a TTL by the waiter's clock) must not take a
    claim from an owner that is alive and writing: its writes renew its claims."""
    path = tmp_path / "c.sqlite3"
    ttl = 2.0
    with Cache(path) as a, Cache(path) as b:

        async def scenario():
            assert await a.claim_or_wait("k1", ttl) is None  # a sends k1
            waiter = asyncio.ensure_future(b.claim_or_wait("k1", ttl))
            end = time.monotonic() + 2.5 * ttl
            i = 0
            while time.monotonic() < end:  # a keeps answering other requests: news
                a.put(f"other{i}", GOOD)
                i += 1
                await asyncio.sleep(0.05)
            assert not waiter.done()  # still waiting past the TTL: the owner is alive and writing
            a.put("k1", GOOD)
            return await asyncio.wait_for(waiter, timeout=30)

        assert asyncio.run(scenario()) == GOOD
