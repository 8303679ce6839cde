"""Hostile answers (issue 30, points 1, 4, 5, 6): what a server, a proxy or a hand-edited file can
put in front of the LLM client, and what must hold for each case.

- No traceback and no "internal error": the row fails with a reason (or the stage stops with one
  line naming the file or the call), and nothing that cannot be used is cached.
- Afterwards, a run against a healthy server recovers every failed row.

Kinds: chat answers (content and refusal types, choices shapes, usage values, model), cache rows
written by the test, cache claims with an expiry that never comes, spend-ledger rows, Batch API
polls / uploads / creations / listings, Batch output files (bytes that are not UTF-8, lines with
unusable answers), and a few cases through the real CLI (`python -m pipeline.cli`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from llm_fixtures import KEY_ENV, api_key, make_tasks, settings_for, write_prompt  # noqa: F401
from openai_server import FakeOpenAIServer, Reply, completion, default_content
from pipeline.errors import InfirError
from pipeline.llm import build_body, cache_key, make_client
from pipeline.llm.budget import SpendLedger
from pipeline.llm.cache import Cache
from pipeline.llm.openai_api.batch import BatchRunner
from pipeline.store import read_stage_table
from reliability_helpers import KEY_ENV as CLI_KEY, child_env, infir_cmd, responder

N = 3  # tasks per case
CHAT = ("POST", "/v1/chat/completions")


def healthy(body: dict, n: int) -> dict:
    return completion(body, n, default_content(body))


def answering(mutate: Callable[[dict], Any]) -> Callable:
    """A chat route answering every request with a healthy answer that `mutate` edited in place."""

    def route(srv, rec):
        resp = healthy(rec.body, rec.n)
        mutate(resp)
        return Reply(200, resp)

    return route


def msg(**kw):
    return lambda r: r["choices"][0]["message"].update(kw)


def choice(**kw):
    return lambda r: r["choices"][0].update(kw)


def top(**kw):
    return lambda r: r.update(kw)


def usage(**kw):
    return lambda r: r["usage"].update(kw)


def pop(*path):
    def f(r):
        for p in path[:-1]:
            r = r[p]
        r.pop(path[-1])
    return f


def no_internal_error(results) -> None:
    for r in results:
        assert "internal error" not in (r.error or ""), r.error


def stored(cache_path: Path) -> dict[str, Any]:
    con = sqlite3.connect(cache_path)
    try:
        return dict(con.execute("SELECT key, response FROM responses").fetchall())
    finally:
        con.close()


def recovered(tmp_path: Path, tasks) -> None:
    """A run against a healthy server answers every task, asking the server for each."""
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        results = c.run(tasks)
        c.close()
    assert all(r.ok for r in results), [r.error for r in results]
    assert srv.count == len(tasks)


# -- 1. chat answers: refused at the edge, retried, never cached ------------------------------------

ONLINE = {
    "content is a number": msg(content=5),
    "content is a float": msg(content=1.5),
    "content is true": msg(content=True),
    "content is a list": msg(content=["{}"]),
    "content is an object": msg(content={"label": "x"}),
    "refusal is a number": msg(refusal=5),
    "message is null": choice(message=None),
    "message is a string": choice(message="hi"),
    "message is missing": pop("choices", 0, "message"),
    "finish_reason is a number": choice(finish_reason=7),
    "choices is a string": top(choices="x"),
    "choices is a list of numbers": top(choices=[1, 2, 3]),
    "choices holds null": top(choices=[None]),
    "choices is an object": top(choices={"0": {}}),
    "usage is a string": top(usage="free"),
    "usage is a list": top(usage=[1, 2]),
    "usage without its counts": top(usage={"total_tokens": 5}),
    "prompt_tokens is text": usage(prompt_tokens="lots"),
    "completion_tokens is Infinity": usage(completion_tokens=math.inf),
    "prompt_tokens is NaN": usage(prompt_tokens=math.nan),
    "prompt_tokens is negative": usage(prompt_tokens=-5),
    "completion_tokens is negative": usage(completion_tokens=-1),
    "prompt_tokens is a fraction": usage(prompt_tokens=1.5),
    "prompt_tokens is true": usage(prompt_tokens=True),
    "prompt_tokens is 10**30": usage(prompt_tokens=10**30),
    "prompt_tokens_details is text": usage(prompt_tokens_details="x"),
    "cached_tokens is negative": usage(prompt_tokens_details={"cached_tokens": -1}),
    "cached_tokens above prompt_tokens": usage(prompt_tokens=10, prompt_tokens_details={"cached_tokens": 11}),
    "reasoning_tokens is text": usage(completion_tokens_details={"reasoning_tokens": "x"}),
    "model is a number": top(model=5),
}


@pytest.mark.parametrize("case", list(ONLINE))
def test_hostile_chat_answer_fails_the_row_and_is_never_cached(tmp_path, api_key, case):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        srv.routes[CHAT] = answering(ONLINE[case])
        c = make_client(settings_for(srv, tmp_path, max_attempts=2))
        results = c.run(tasks)
        c.close()
    no_internal_error(results)
    for r in results:
        assert not r.ok and "invalid answer" in r.error, r.error
    assert c.totals.invalid_answers == 2 * N and c.totals.retries == N
    assert stored(tmp_path / "cache" / "llm.sqlite3") == {}  # nothing of it kept
    recovered(tmp_path, tasks)


def test_answer_without_usage_is_priced_from_the_estimate_and_the_cap_counts_it(tmp_path, api_key):
    tasks = make_tasks(write_prompt(tmp_path / "p"), 6)
    with FakeOpenAIServer() as srv:
        srv.routes[CHAT] = answering(pop("usage"))
        c = make_client(settings_for(srv, tmp_path / "a"))
        results = c.run(tasks[:1])
        (r,) = results
        assert r.ok and r.usage.estimated and r.usage.prompt_tokens > 0 and r.cost_usd > 0
        assert c.totals.usage_estimated == 1 and c.totals.cost_usd == pytest.approx(r.cost_usd)
        hit = c.run(tasks[:1])[0]  # a cache hit of it: the same estimate, as saved cost
        assert hit.cached and hit.usage.estimated and c.totals.saved_cost_usd == pytest.approx(r.cost_usd)
        c.close()
        # A cap of 2.5 answers' estimate stops the run: without the estimate they cost $0, no cap.
        srv.reset()
        capped = make_client(settings_for(srv, tmp_path / "b", concurrency=1, max_cost_usd=2.5 * r.cost_usd))
        results = capped.run(tasks)
        capped.close()
    assert capped.budget_exhausted and 2 <= srv.count <= 3
    assert [x.ok for x in results].count(False) >= 3
    no_internal_error(results)


def test_an_online_answer_cannot_pass_itself_off_as_a_batch_answer(tmp_path, api_key):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        honest = make_client(settings_for(srv, tmp_path / "a"))
        paid = honest.run(tasks)
        honest.close()
        srv.routes[CHAT] = answering(top(_infir_batch="batch-forged"))
        c = make_client(settings_for(srv, tmp_path / "b"))
        results = c.run(tasks)
        c.close()
    assert all(r.ok and not r.batch for r in results)  # priced in full, not at the batch discount
    assert c.totals.cost_usd == pytest.approx(honest.totals.cost_usd) and sum(r.cost_usd for r in paid) > 0


# -- 2. cache rows that are not a usable answer: dropped and asked again ---------------------------


def _healthy_text(**edit) -> str:
    resp = completion({"model": "gpt-4o-mini", "messages": []}, 0, '{"label": "x", "score": 1, "reasons": []}')
    for k, v in edit.items():
        resp[k] = v(resp) if callable(v) else v
    return json.dumps(resp)


CACHE_ROWS = {
    "not JSON": "not json {",
    "a JSON list": "[1,2,3]",
    "choices is a string": '{"choices":"x"}',
    "content is a number": _healthy_text(choices=[{"message": {"content": 5}, "finish_reason": "stop"}]),
    "message is a string": '{"choices":[{"message":"hi"}]}',
    "choices holds null": '{"choices":[null]}',
    "JSON null": "null",
    "a JSON string": '"answer"',
    "empty text": "",
    "nested 100000 deep": "[" * 100_000,
    "negative usage": _healthy_text(usage={"prompt_tokens": -3, "completion_tokens": 2}),
    "usage is text": _healthy_text(usage={"prompt_tokens": "lots", "completion_tokens": 2}),
    "bytes that are not UTF-8": b"\xff\x00\xfe{",
}


@pytest.mark.parametrize("case", list(CACHE_ROWS))
def test_cache_row_that_is_not_an_answer_is_dropped_and_asked_again(tmp_path, api_key, case):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    path = tmp_path / "cache" / "llm.sqlite3"
    Cache(path).close()
    con = sqlite3.connect(path)
    with con:
        con.executemany(
            "INSERT INTO responses(key, model, response, created_at) VALUES (?, 'gpt-4o-mini', ?, 0)",
            [(cache_key(build_body(t)), CACHE_ROWS[case]) for t in tasks],
        )
    con.close()
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        results = c.run(tasks)
        c.close()
    no_internal_error(results)
    assert all(r.ok and not r.repaired and not r.cached for r in results), [r.error for r in results]
    assert srv.count == N and c.totals.cache_dropped == N  # each asked again, once, and counted
    for text in stored(path).values():  # replaced by the new answers
        assert json.loads(text)["choices"][0]["message"]["content"].startswith("{")
    recovered_again = make_client(settings_for("http://127.0.0.1:9/v1", tmp_path))  # nothing to ask now
    assert all(r.ok and r.cached for r in recovered_again.run(tasks)) and recovered_again.totals.http_calls == 0
    recovered_again.close()


# -- 3. cache claims: the documented rule, whatever expiry the row states -------------------------

CLAIMS = {
    "far-future expiry, owner on another host": ("elsewhere:1:x", lambda: time.time() + 1e9),
    "infinite expiry": ("elsewhere:1:x", lambda: math.inf),
    "expiry as text": ("elsewhere:1:x", lambda: "never"),
    "far-future expiry, owner a live pid here": (f"{socket.gethostname()}:{os.getpid()}:other", lambda: time.time() + 1e9),
    "owner as a number": (12345, lambda: time.time() + 1e9),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CLAIMS))
def test_a_claim_with_a_far_future_expiry_is_taken_over_after_the_ttl(tmp_path, case):
    path = tmp_path / "llm.sqlite3"
    owner, expiry = CLAIMS[case]
    with Cache(path) as cache:
        con = sqlite3.connect(path)
        with con:
            con.execute("INSERT INTO claims VALUES ('k1', ?, ?)", (owner, expiry()))
        t0 = time.monotonic()
        got = asyncio.run(asyncio.wait_for(cache.claim_or_wait("k1", 0.3), timeout=20))
        assert got is None  # claimed: this process sends the request itself
        assert con.execute("SELECT owner FROM claims WHERE key = 'k1'").fetchone() == (cache.owner,)
        con.close()
    if case not in ("expiry as text",):
        assert time.monotonic() - t0 >= 0.3  # a claim that looked live was waited for, for the TTL


@pytest.mark.timeout(90)
def test_a_run_is_not_blocked_by_claims_that_never_expire(tmp_path, api_key):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    path = tmp_path / "cache" / "llm.sqlite3"
    Cache(path).close()
    con = sqlite3.connect(path)
    with con:
        con.executemany("INSERT INTO claims VALUES (?, 'elsewhere:1:x', 1e18)", [(cache_key(build_body(t)),) for t in tasks])
    con.close()
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path, deadline_s=0.5, request_timeout_s=0.5))  # TTL 1 s
        results = asyncio.run(asyncio.wait_for(c.arun(tasks), timeout=60))
        c.close()
    assert all(r.ok for r in results) and srv.count == N


# -- 4. the spend ledger: a forged row cannot lift the cap ----------------------------------------

LEDGER_ROWS = {
    "negative spend": ("spend", "INSERT INTO spend (at, label, usd) VALUES (0, 'generate', -999.98)"),
    "infinite spend": ("spend", "INSERT INTO spend (at, label, usd) VALUES (0, 'generate', 9e999)"),
    "spend as text": ("spend", "INSERT INTO spend (at, label, usd) VALUES (0, 'generate', 'free')"),
    "spend as bytes": ("spend", "INSERT INTO spend (at, label, usd) VALUES (0, 'generate', X'00')"),
    "negative reservation": ("reserved", f"INSERT INTO reserved (pid, usd, at) VALUES ({os.getpid()}, -5, 0)"),
}


@pytest.mark.parametrize("case", list(LEDGER_ROWS))
def test_forged_ledger_row_is_refused_naming_the_file(tmp_path, api_key, case):
    table, forge = LEDGER_ROWS[case]
    path = tmp_path / "runs" / "r" / "spend.sqlite3"
    SpendLedger(path).close()
    con = sqlite3.connect(path)
    with con:
        con.execute(forge)
    con.close()
    with pytest.raises(InfirError) as e:
        SpendLedger(path, cap=0.01)
    assert str(path) in str(e.value) and f"of table {table}" in str(e.value) and "\n" not in str(e.value)
    # Once the row is gone, a run against a healthy server spends within the cap.
    con = sqlite3.connect(path)
    with con:
        con.execute(f"DELETE FROM {table}")
    con.close()
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        c.ledger = SpendLedger(path, cap=1.0)
        assert all(r.ok for r in c.run(tasks)) and srv.count == N
        assert c.ledger.spent() == pytest.approx(c.totals.cost_usd) and c.ledger.spent() > 0
        c.close()


@pytest.mark.parametrize("usd", [-0.01, math.inf, math.nan])
def test_the_ledger_never_records_a_negative_or_non_finite_amount(tmp_path, usd):
    for cap in (1.0, None):
        ledger = SpendLedger(tmp_path / f"spend-{cap}.sqlite3", cap=cap)
        with pytest.raises(InfirError, match=r"spend-.*\.sqlite3: refusing to record"):
            ledger.settle(None, usd)
        with pytest.raises(InfirError, match=r"spend-.*\.sqlite3: refusing to record"):
            ledger.reserve(usd)
        assert ledger.spent() == 0.0 and ledger.reserve(0.5) is not None
        ledger.close()


# -- 5. the Batch and Files API: every answer checked like an online one ----------------------------

POLL = 0.02


def _runner(client, tmp_path: Path, **kw) -> BatchRunner:
    return BatchRunner(client, tmp_path / "state", poll_interval_s=POLL, **kw)


def _batch_pass(tmp_path: Path, srv, tasks, **kw):
    """prefetch (bounded in time: a poll answered with `{}` used to loop for ever), then the
    client's pass from the cache; (report or the InfirError, results or None)."""
    c = make_client(settings_for(srv, tmp_path, max_attempts=2))
    runner = _runner(c, tmp_path, **kw)
    try:
        report = asyncio.run(asyncio.wait_for(runner._prefetch(tasks), timeout=60))
    except InfirError as e:
        c.close()
        return e, None
    c.backend = runner.backend()
    results = c.run(tasks)
    c.close()
    return report, results


def batch_recovered(tmp_path: Path, tasks) -> None:
    """Against a healthy server, the same state folder: every task answered (resumed batches polled
    again, the rest submitted), nothing online."""
    with FakeOpenAIServer() as srv:
        report, results = _batch_pass(tmp_path, srv, tasks)
        assert not isinstance(report, InfirError), report
        assert all(r.ok for r in results), [r.error for r in results]
        assert srv.chat_requests() == []


def _html(srv, rec) -> Reply:
    return Reply(200, raw=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")


POLLS = {
    "an HTML page": _html,
    "an empty object": lambda srv, rec: Reply(200, {}),
    "a JSON list": lambda srv, rec: Reply(200, [1, 2]),
    "status is a number": lambda srv, rec: Reply(200, {"id": rec.params["id"], "object": "batch", "status": 7}),
    "request_counts is text": lambda srv, rec: Reply(200, {"id": rec.params["id"], "status": "in_progress",
                                                           "request_counts": "x"}),
    "no id": lambda srv, rec: Reply(200, {"object": "batch", "status": "completed"}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(POLLS))
def test_malformed_batch_poll_is_retried_then_one_line_then_resumed(tmp_path, api_key, case):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        srv.routes[("GET", "/v1/batches/{id}")] = POLLS[case]
        err, _ = _batch_pass(tmp_path, srv, tasks)
        assert isinstance(err, InfirError), err
        assert "poll batch-" in str(err) and "after 2 attempts" in str(err) and "rerun to resume" in str(err)
        assert "\n" not in str(err) and srv.counts.get("/v1/batches/batch-test000002") == 2  # retried once
        # The batch was created and recorded: the rerun polls it instead of submitting again.
        srv.routes[("GET", "/v1/batches/{id}")] = FakeOpenAIServer.batches_retrieve
        report, results = _batch_pass(tmp_path, srv, tasks)
        assert report.resumed == 1 and srv.batch_creations == 1 and all(r.ok for r in results)


@pytest.mark.timeout(120)
def test_one_malformed_poll_is_retried_within_the_call(tmp_path, api_key):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    polls = []

    def once_html(srv, rec):
        polls.append(rec.n)
        return _html(srv, rec) if len(polls) == 1 else FakeOpenAIServer.batches_retrieve(srv, rec)

    with FakeOpenAIServer() as srv:
        srv.routes[("GET", "/v1/batches/{id}")] = once_html
        report, results = _batch_pass(tmp_path, srv, tasks)
    assert report.answered == N and all(r.ok for r in results) and len(polls) >= 2


def _after(handler: Callable, answer: Callable, times: int = 1) -> Callable:
    """The real handler runs (the file is stored, the batch created); its first `times` answers are
    replaced by `answer`'s."""
    seen = []

    def route(srv, rec):
        real = handler(srv, rec)
        seen.append(1)
        return answer(srv, rec) if len(seen) <= times else real

    route.accepts_raw = getattr(handler, "accepts_raw", False)
    return route


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["upload", "create"])
def test_malformed_upload_or_creation_answer_is_retried_without_a_second_batch(tmp_path, api_key, case):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        route = ("POST", "/v1/files") if case == "upload" else ("POST", "/v1/batches")
        handler = FakeOpenAIServer.files_create if case == "upload" else FakeOpenAIServer.batches_create
        srv.routes[route] = _after(handler, _html)
        report, results = _batch_pass(tmp_path, srv, tasks)
        assert not isinstance(report, InfirError), report
        assert all(r.ok for r in results) and srv.batch_creations == 1  # the created batch was found, not made twice


@pytest.mark.timeout(120)
def test_malformed_creation_and_listing_stop_with_one_line_then_the_batch_is_adopted(tmp_path, api_key):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        srv.routes[("POST", "/v1/batches")] = _after(FakeOpenAIServer.batches_create, _html)
        srv.routes[("GET", "/v1/batches")] = _html
        err, _ = _batch_pass(tmp_path, srv, tasks)
        assert isinstance(err, InfirError) and "list batches" in str(err) and "\n" not in str(err), err
        srv.routes[("GET", "/v1/batches")] = FakeOpenAIServer.batches_list
        report, results = _batch_pass(tmp_path, srv, tasks)
        assert all(r.ok for r in results) and srv.batch_creations == 1 and report.submitted == 0


def _output(transform: Callable[[bytes], bytes]) -> Callable:
    """GET /v1/files/{id}/content with the batch's output file passed through `transform`."""

    def route(srv, rec):
        reply = FakeOpenAIServer.files_content(srv, rec)
        if reply.raw is not None and srv.files[rec.params["id"]]["filename"].endswith("_output.jsonl"):
            reply.raw = transform(reply.raw)
        return reply

    return route


def _each_body(edit: Callable[[dict], Any]) -> Callable[[bytes], bytes]:
    def transform(raw: bytes) -> bytes:
        out = []
        for line in raw.splitlines():
            entry = json.loads(line)
            edit(entry["response"]["body"])
            out.append(json.dumps(entry).encode())
        return b"\n".join(out) + b"\n"
    return transform


def _first_line_not_utf8(raw: bytes) -> bytes:
    first, rest = raw.split(b"\n", 1)
    return first.replace(b'"content": "', b'"content": "\xff\xfe', 1) + b"\n" + rest


# transform of the output file, requests that fail, what their reason says
OUTPUTS = {
    "a line that is not UTF-8": (_first_line_not_utf8, 1, "result line 1 is not valid UTF-8"),
    "a file that is not UTF-8": (lambda raw: b"\xff\xfe\x00\x81" * 50 + b"\n" + raw.replace(b"{", b"\x81{"), N,
                                 "not answered"),
    "usage is text": (_each_body(usage(prompt_tokens="lots")), N, "invalid answer: usage.prompt_tokens"),
    "completion_tokens is Infinity": (_each_body(usage(completion_tokens=math.inf)), N, "invalid answer: usage"),
    "usage is negative": (_each_body(usage(completion_tokens=-7)), N, "invalid answer: usage"),
    "content is a number": (_each_body(msg(content=5)), N, "invalid answer: choices.0.message.content"),
    "choices holds a number": (_each_body(top(choices=[1])), N, "invalid answer: choices.0"),
    "message is a string": (_each_body(choice(message="hi")), N, "invalid answer: choices.0.message"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(OUTPUTS))
def test_batch_output_that_cannot_be_used_fails_those_requests_then_a_rerun_recovers(tmp_path, api_key, case):
    transform, bad, reason = OUTPUTS[case]
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        srv.routes[("GET", "/v1/files/{id}/content")] = _output(transform)
        report, results = _batch_pass(tmp_path, srv, tasks, max_rounds=1)
    assert not isinstance(report, InfirError), report
    no_internal_error(results)
    failed = [r for r in results if not r.ok]
    assert len(failed) == bad and report.failed == bad, [r.error for r in results]
    for r in failed:
        assert reason in r.error, r.error
    assert len(stored(tmp_path / "cache" / "llm.sqlite3")) == N - bad  # what could not be used is not kept
    batch_recovered(tmp_path, tasks)


def test_batch_answer_without_usage_is_priced_from_the_estimate(tmp_path, api_key):
    tasks = make_tasks(write_prompt(tmp_path / "p"), N)
    with FakeOpenAIServer() as srv:
        srv.routes[("GET", "/v1/files/{id}/content")] = _output(_each_body(pop("usage")))
        report, results = _batch_pass(tmp_path, srv, tasks)
    assert all(r.ok and r.batch and r.usage.estimated for r in results)
    assert report.usage_estimated == N and report.cost_usd > 0 and report.prompt_tokens > 0


# -- 6. through the real CLI (`python -m pipeline.cli`, a subprocess: its whole output is seen) ------

QUERIES = 4


def infir(srv, *args: str, sets: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    """`infir <args>` on 4 queries of the bundled sample against `srv`; (exit status, output), with
    no traceback and no "internal error" in the output, whatever happened."""
    base = {"source.path": str(Path(__file__).resolve().parents[2] / "data" / "sample"),
            "source.sample_queries": QUERIES, "llm.backend": "openai", "llm.base_url": srv.base_url,
            "llm.api_key_env": CLI_KEY, "llm.max_attempts": 2, "llm.backoff_base_s": 0.01,
            "llm.backoff_max_s": 0.02, **(sets or {})}
    argv = list(args)
    for k, v in base.items():
        argv += ["--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}"]
    p = subprocess.run(infir_cmd(*argv), env=child_env(**{CLI_KEY: "sk-test-hostile"}), capture_output=True,
                       text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "internal error" not in out, out[-3000:]
    return p.returncode, out


def generate_errors() -> list:
    return read_stage_table(Path("runs/sample/generate")).column("generate_error").to_pylist()


def _heal(srv) -> None:
    srv.routes[CHAT] = FakeOpenAIServer.chat_completions
    srv.reset()


@pytest.mark.parametrize("case", ["content is a number", "completion_tokens is Infinity", "usage is a string"])
def test_cli_hostile_answers_fail_rows_with_a_reason_and_a_rerun_recovers_them(tmp_path, case):
    with FakeOpenAIServer(responder=responder) as srv:
        srv.routes[CHAT] = answering(ONLINE[case])
        rc, out = infir(srv, "build", "--until", "generate")
        errors = generate_errors()
        assert rc == 3 and len(errors) == QUERIES, out[-2000:]  # finished, with failed rows
        assert all(e and "invalid answer" in e for e in errors), errors
        _heal(srv)
        rc, out = infir(srv, "build", "--until", "generate")
        assert rc == 0 and srv.count == QUERIES and generate_errors() == [None] * QUERIES, out[-2000:]


def test_cli_cache_rows_that_are_not_answers_are_dropped_and_asked_again(tmp_path):
    with FakeOpenAIServer(responder=responder) as srv:
        assert infir(srv, "build", "--until", "generate")[0] == 0
        con = sqlite3.connect(".cache/llm.sqlite3")
        with con:
            con.execute("UPDATE responses SET response = 'not json {'")
        con.close()
        srv.reset()
        rc, out = infir(srv, "generate", "--force")
        assert rc == 0 and srv.count == QUERIES and generate_errors() == [None] * QUERIES, out[-2000:]
        assert any("cache_entries_dropped" in line and line.split("│")[-2].strip() == str(QUERIES)
                   for line in out.splitlines()), out[-2000:]


def test_cli_forged_ledger_row_stops_before_any_request(tmp_path):
    ledger = Path("runs/sample/spend.sqlite3")
    SpendLedger(ledger).close()
    con = sqlite3.connect(ledger)
    with con:
        con.execute("INSERT INTO spend (at, label, usd) VALUES (0, 'generate', -999.98)")
    con.close()
    with FakeOpenAIServer(responder=responder) as srv:
        rc, out = infir(srv, "build", "--until", "generate", "--max-cost-usd", "0.01")
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert rc == 2 and srv.count == 0 and len(errors) == 1, out[-2000:]
        assert "spend.sqlite3: row 1 of table spend holds -999.98" in errors[0]
        con = sqlite3.connect(ledger)
        with con:
            con.execute("DELETE FROM spend WHERE usd < 0")
        con.close()
        rc, out = infir(srv, "build", "--until", "generate", "--max-cost-usd", "0.01")
        assert rc == 0 and srv.count == QUERIES and generate_errors() == [None] * QUERIES, out[-2000:]
        assert 0 < SpendLedger(ledger).spent() <= 0.01


@pytest.mark.timeout(180)
def test_cli_batch_poll_answering_html_is_one_line_then_a_rerun_resumes(tmp_path):
    batch = {"llm.mode": "batch", "llm.batch_poll_interval_s": 0.05}
    with FakeOpenAIServer(responder=responder) as srv:
        srv.routes[("GET", "/v1/batches/{id}")] = _html
        rc, out = infir(srv, "build", "--until", "generate", sets=batch)
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(errors) == 1 and "poll batch-" in errors[0] and "rerun to resume" in errors[0], out[-2000:]
        srv.routes[("GET", "/v1/batches/{id}")] = FakeOpenAIServer.batches_retrieve
        rc, out = infir(srv, "build", "--until", "generate", sets=batch)
        assert rc == 0 and srv.batch_creations == 1 and generate_errors() == [None] * QUERIES, out[-2000:]


@pytest.mark.timeout(180)
def test_cli_claims_that_never_expire_do_not_block_the_run(tmp_path):
    with FakeOpenAIServer(responder=responder) as srv:
        assert infir(srv, "build", "--until", "generate")[0] == 0
        con = sqlite3.connect(".cache/llm.sqlite3")
        with con:
            keys = [k for (k,) in con.execute("SELECT key FROM responses")]
            con.execute("DELETE FROM responses")
            con.executemany("INSERT INTO claims VALUES (?, 'elsewhere:1:x', 1e18)", [(k,) for k in keys])
        con.close()
        srv.reset()
        rc, out = infir(srv, "generate", "--force", sets={"llm.deadline_s": 1, "llm.request_timeout_s": 1}, timeout=150)
        assert rc == 0 and srv.count == QUERIES and generate_errors() == [None] * QUERIES, out[-2000:]
