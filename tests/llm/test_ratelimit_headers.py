"""The client against a server that enforces OpenAI's limits (tests/openai_limits.py): pacing by the
`x-ratelimit-*` headers, waiting for a rate limit beyond the deadline (bounded, and said in the
progress line), and timeouts by model family. Time-scaled, so each takes seconds."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx2
import pytest

from conftest import make_config
from llm_fixtures import KEY_ENV, api_key, make_tasks, settings_for, write_prompt  # noqa: F401
from openai_limits import Service, asked_tokens, go_duration, prompt_tokens
from openai_server import FakeOpenAIServer
from pipeline.llm import make_client
from pipeline.llm.openai_api.backend import retry_after_seconds
from pipeline.llm.ratelimit import RateLimiter, RateLimitHeaders, format_wait
from pipeline.llm.tokens import estimate_prompt_tokens
from pipeline.runner.watch import StageWatch
from reliability_helpers import responder
from stage_helpers import run_between, run_until

MINI = "gpt-4o-mini"

# -- the server's limits ------------------------------------------------------------------------


def test_server_limits_headers_429_body_and_counters():
    svc = Service({MINI: (None, 10_000)}, time_scale=60)  # 10,000 tokens per second
    body = {"model": MINI, "max_tokens": 3000,
            "messages": [{"role": "user", "content": "What is a widget, and why? " * 20}]}
    asked = asked_tokens(body)
    # The server's own count, not the client's chars/4.
    assert prompt_tokens(body) != estimate_prompt_tokens(body["messages"])
    with FakeOpenAIServer(service=svc) as srv:
        with httpx2.Client(base_url=srv.base_url) as http:
            answers = [http.post("/chat/completions", json=body) for _ in range(4)]
            stats = http.get("/service/stats").json()
    ok, refused = answers[:3], answers[3]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    for a in answers:  # the real headers on every answer
        assert a.headers["x-ratelimit-limit-tokens"] == "10000"
        assert "x-ratelimit-limit-requests" not in a.headers  # no RPM limit set
    remaining = [int(a.headers["x-ratelimit-remaining-tokens"]) for a in ok]
    assert remaining[0] == 10_000 - asked  # a full bucket less the first request
    assert remaining[0] > remaining[1] > remaining[2]
    assert 0 < RateLimitHeaders.parse(ok[2].headers).tokens.reset_s < 1.0  # real seconds, time-scaled
    err = refused.json()["error"]
    assert err["type"] == "tokens" and err["code"] == "rate_limit_exceeded"
    assert err["message"].startswith(f"Rate limit reached for {MINI} in organization org-test on tokens per min "
                                     f"(TPM): Limit 10000, Used ")
    assert f"Requested {asked}. Please try again in " in err["message"]
    assert "retry-after" not in refused.headers
    t = svc.tally.of(MINI)
    assert (t.requests, t.answered, t.rate_limited, t.tokens_asked) == (4, 3, 1, 3 * asked)
    assert t.prompt_tokens > 0 and stats["models"][MINI]["rate_limited"] == 1


def test_429_wait_hint_prefers_the_message_over_the_full_reset():
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    msg = "Rate limit reached for gpt-4o-mini ... Requested 1500. Please try again in 180ms. Visit https://..."
    assert retry_after_seconds(headers, 429, message=msg) == pytest.approx(0.18)
    assert retry_after_seconds(headers, 429, message="Please try again in 1m2.5s.") == pytest.approx(62.5)
    assert retry_after_seconds(headers, 429) == 360.0  # no message: the reset header, as before
    assert retry_after_seconds({"retry-after": "2", **headers}, 429, message=msg) == 2.0  # Retry-After first


def test_durations_as_the_service_writes_them():
    assert [go_duration(s) for s in (0.0201, 0.18, 1.5, 360.0, 3723.0)] == ["21ms", "180ms", "1.5s", "6m0s", "1h2m3s"]
    assert [format_wait(s) for s in (0.18, 1.5, 360.0, 7200.0)] == ["180ms", "1.5s", "6m0s", "2h0m0s"]


def test_limiter_learns_limit_window_and_level_from_headers():
    lim = RateLimiter()

    async def go():
        first = await lim.acquire(1000, model=MINI)
        second = await lim.acquire(1000, model=MINI)
        # The answer to the first: 30,000 per minute, 4,000 left, full again in 52 s -> a 60 s window.
        lim.observe(first, RateLimitHeaders.parse({
            "x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "4000",
            "x-ratelimit-reset-tokens": "52s"}))
        return second

    asyncio.run(go())
    m = lim.learned()[MINI]["tokens"]
    assert m["limit"] == 30_000 and abs(m["window_s"] - 60.0) < 0.01
    # 4,000 left at the first's arrival, less the second (sent after it), refilled ~0 s since.
    assert 2990 <= m["level"] <= 3010

    async def without_headers():  # an answer with none: the service does not send them (any more)
        lim.observe(await lim.acquire(10, model=MINI), None)

    asyncio.run(without_headers())
    assert lim.learned()[MINI] == {}


# -- pacing by the headers ----------------------------------------------------------------------


def test_tpm_limited_run_paces_by_headers(tmp_path, api_key):
    """400 requests of ~263 tokens asked (max_tokens 200) against 20,000 TPM at 60x: the token
    bound is ~5.3 s. Without pacing (the client of before), about two requests in three were 429."""
    scale, tpm = 60, 20_000
    svc = Service({MINI: (None, tpm)}, time_scale=scale, chat_latency=(3.0, 0.3))  # ~50 ms real
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(service=svc) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=32, max_attempts=10, deadline_s=60))
        t0 = time.monotonic()
        results = c.run(make_tasks(prompt, 400))
        wall = time.monotonic() - t0
    t = svc.tally.of(MINI)
    bound = t.tokens_asked / (tpm * scale / 60)
    assert all(r.ok for r in results)
    assert t.rate_limited <= 0.05 * t.requests, (t.rate_limited, t.requests)
    assert wall <= 1.2 * bound, (wall, bound)
    assert c.limiter.learned()[MINI]["tokens"]["limit"] == tpm


def test_sample_build_against_a_tpm_limited_server(tmp_path, monkeypatch):
    """`build --until verify` on configs/sample.toml (146 rows; generate and mine on gpt-4o-mini,
    verify on o3-mini) against per-model token limits at 60x."""
    monkeypatch.setenv(KEY_ENV, "sk-test-limits")
    scale = 60
    limits = {MINI: (5000, 120_000), "o3-mini": (5000, 250_000)}
    svc = Service(limits, time_scale=scale)
    with FakeOpenAIServer(service=svc, responder=responder) as srv:
        cfg = make_config(**{"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.api_key_env": KEY_ENV,
                             "llm.backoff_base_s": 0.01})
        run_until(cfg, "source")
        t0 = time.monotonic()
        run_between(cfg, "generate", "verify")
        wall = time.monotonic() - t0
    requests = svc.tally.total("requests")
    bound = sum(t.tokens_asked / (limits[m][1] * scale / 60) for m, t in svc.tally.models.items())
    assert requests >= 3 * 140
    assert svc.tally.total("rate_limited") <= 0.05 * requests, svc.tally.as_dict()
    assert wall <= 1.2 * bound, (wall, bound)


# -- a rate-limit wait longer than the deadline -------------------------------------------------


def test_reset_hint_longer_than_the_deadline_is_waited_for_and_said(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["429"], retry_after="2", latency=0.05) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=4, deadline_s=1.0, request_timeout_s=0.5,
                                     backoff_base_s=0.001, backoff_max_s=0.001))
        watch = StageWatch("generate", 6, c, quiet=True)
        box, lines = {}, []
        th = threading.Thread(target=lambda: box.setdefault("r", c.run(make_tasks(prompt, 6))))
        th.start()
        while th.is_alive():
            lines.append(watch.line())
            time.sleep(0.1)
        th.join()
        reqs = srv.chat_requests()
    assert all(r.ok for r in box["r"]), [r.error for r in box["r"]]
    assert [q.status for q in reqs].count(429) == 1 and len(reqs) == 7
    t429 = next(q for q in reqs if q.status == 429).finished
    # Nothing sent during the pause (a request sent before the client read the 429 may follow it).
    assert [q for q in reqs if t429 + 0.3 < q.arrived < t429 + 2.0] == []
    assert any("waiting 2" in ln and "for a 429's wait hint" in ln for ln in lines), lines[:5]


def test_rate_limit_wait_past_its_bound_stops_with_one_line(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["429"], retry_after="30") as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=2, max_rate_limit_wait_s=5))
        t0 = time.monotonic()
        rs = c.run(make_tasks(prompt, 4))
        assert time.monotonic() - t0 < 10
        reqs = srv.chat_requests()
    t429 = next(q for q in reqs if q.status == 429).finished
    assert [q for q in reqs if q.arrived > t429 + 0.2] == []  # nothing sent once the wait was known
    assert c.stop_reason.startswith("rate limit: waiting 3") and "llm.max_rate_limit_wait_s (5s)" in c.stop_reason
    assert all(r.error == c.stop_reason for r in rs if not r.ok) and sum(not r.ok for r in rs) >= 2


# -- timeouts by model family -------------------------------------------------------------------


def test_slow_reasoning_answer_is_waited_for_not_resent(tmp_path, api_key):
    """Every answer takes 1 s. A chat model keeps its 0.3 s attempt timeout (and is resent); o3-mini
    gets the reasoning timeout, so each row is sent exactly once."""
    svc = Service(reasoning_latency=(1.0, 0.0), chat_latency=(1.0, 0.0))
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(service=svc) as srv:
        s = settings_for(srv, tmp_path, concurrency=8, request_timeout_s=0.3, reasoning_request_timeout_s=5.0,
                         deadline_s=0.8, max_attempts=3)
        c = make_client(s)
        slow = c.run(make_tasks(prompt, 4, model="o3-mini"))
        chat = c.run(make_tasks(prompt, 1, model=MINI, start=100))
    assert all(r.ok and r.http_calls == 1 for r in slow), [r.error for r in slow]
    assert svc.tally.of("o3-mini").requests == 4
    assert not chat[0].ok and ("timed out after 0.3s" in chat[0].error or "deadline" in chat[0].error)
    assert svc.tally.of(MINI).requests >= 2
    assert s.deadline_for("o3-mini") == 5.0 and s.deadline_for(MINI) == 0.8


@pytest.mark.parametrize("model,timeout", [("o3-mini", 600.0), ("gpt-5", 600.0), ("gpt-5-chat-latest", 60.0),
                                           (MINI, 60.0)])
def test_default_attempt_timeout_by_family(model, timeout):
    from pipeline.llm.settings import LLMSettings

    assert LLMSettings().attempt_timeout_s(model) == timeout
