"""Retries, rate-limit waits and failure handling against injected server faults."""

from __future__ import annotations

import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402

from llm_fixtures import api_key, item_of, make_tasks, settings_for, write_prompt  # noqa: E402,F401
from openai_server import CONTENT_FAULTS, RETRYABLE_FAULTS, FakeOpenAIServer  # noqa: E402
from pipeline.llm import make_client  # noqa: E402


def test_mixed_faults_30_percent_over_500_requests(tmp_path, api_key):
    n = 500
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, n)

    with FakeOpenAIServer() as clean_srv:
        c = make_client(settings_for(clean_srv, tmp_path / "clean", concurrency=32))
        clean = {r.key_id: r.value for r in c.run(tasks)}
        c.close()
        assert clean_srv.count == n and all(v is not None for v in clean.values())

    with FakeOpenAIServer(fault_rate=0.3, seed=7, fault_kinds=RETRYABLE_FAULTS + CONTENT_FAULTS,
                          retry_after="0", timeout_sleep=1.0) as srv:
        s = settings_for(srv, tmp_path / "faulty", concurrency=32, request_timeout_s=0.3, max_attempts=8)
        c = make_client(s)
        results = c.run(tasks)
        reqs = srv.chat_requests()

    # None lost: one result per task, in input order, each ok or failed with a reason.
    assert [r.key_id for r in results] == [str(i) for i in range(n)]
    for r in results:
        assert (r.ok and r.value is not None and r.error is None) or (not r.ok and r.error), r
    # Every HTTP request the server saw is accounted for by one attempt of ours. Our count may exceed
    # the server's only by attempts that got no answer at all (a request written to a keep-alive
    # socket the server had just closed, or a timeout before the server read it, never arrives).
    ours = sum(r.http_calls for r in results)
    assert ours == c.totals.http_calls
    assert ours - c.totals.no_response <= srv.count <= ours, (ours, srv.count, c.totals.no_response)
    assert c.totals.no_response > 0  # the drop and timeout faults did happen
    faults = defaultdict(list)
    for q in reqs:
        faults[item_of(q.body)].append(q.fault)
    seen = {f for fs in faults.values() for f in fs if f}
    assert seen == set(RETRYABLE_FAULTS + CONTENT_FAULTS), seen
    assert 0.2 < sum(1 for q in reqs if q.fault) / len(reqs) < 0.4

    only_retryable = 0
    for r in results:
        fs = faults[int(r.key_id)]
        if not any(f in CONTENT_FAULTS for f in fs):
            # Retryable faults only: exactly the fault-free outcome.
            only_retryable += 1
            assert r.ok and r.value == clean[r.key_id], (r, fs)
            assert not r.repaired
        elif r.ok:
            # A bad answer was repaired; the server answers the repair like the original question.
            assert r.repaired and r.value == clean[r.key_id]
        else:
            assert "invalid after one repair" in r.error or "repair request failed" in r.error, r.error
    assert only_retryable > 300
    assert c.totals.failures == sum(not r.ok for r in results)
    assert c.totals.retries > 50
    c.close()


def test_retry_after_2s_is_honoured(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["429"], retry_after="2") as srv:
        # Tiny backoff: if Retry-After were ignored the retry would come within milliseconds.
        c = make_client(settings_for(srv, tmp_path, backoff_base_s=0.001, backoff_max_s=0.001))
        r = c.run(make_tasks(prompt, 1))[0]
        reqs = srv.chat_requests()
    assert r.ok and r.http_calls == 2
    assert [q.status for q in reqs] == [429, 200]
    gap = reqs[1].arrived - reqs[0].finished
    assert 2.0 <= gap < 3.0, gap


def test_429_pauses_the_whole_client(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["429"], retry_after="1", latency=0.1) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=2, backoff_base_s=0.001, backoff_max_s=0.001))
        rs = c.run(make_tasks(prompt, 6))
        reqs = srv.chat_requests()
    assert all(r.ok for r in rs)
    assert len(reqs) == 7
    t429 = next(q for q in reqs if q.status == 429).finished
    # Without the client-wide pause, tasks 2..5 would follow task 1 every ~0.1 s from ~t429
    # (latency 0.1, two slots); with it, nothing is sent until the 1 s wait is over.
    in_pause = [q for q in reqs if t429 + 0.25 < q.arrived < t429 + 0.95]
    assert in_pause == []
    assert sum(1 for q in reqs if q.arrived >= t429 + 1.0) >= 4


def test_non_retryable_400_not_retried(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["400"]) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=1))
        r1, r2 = c.run(make_tasks(prompt, 2))
    assert not r1.ok and r1.http_calls == 1 and "HTTP 400" in r1.error and "Invalid parameter" in r1.error
    assert r2.ok  # a 400 is the request's problem, not the client's: the run goes on
    assert srv.count == 2 and c.totals.retries == 0 and c.stop_reason is None


def test_fatal_401_stops_sending_and_redacts_key(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["401"]) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=1))
        rs = c.run(make_tasks(prompt, 5))
        assert srv.count == 1
        assert srv.requests[0].headers["authorization"] == f"Bearer {api_key}"
    assert not any(r.ok for r in rs)
    assert "HTTP 401" in rs[0].error and "Incorrect API key" in rs[0].error
    assert api_key not in rs[0].error and api_key[8:] not in rs[0].error
    assert all(r.error.startswith("aborted: HTTP 401") and r.http_calls == 0 for r in rs[1:])


def test_max_attempts_bounded(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(fault_rate=1.0, fault_kinds=("503",)) as srv:
        c = make_client(settings_for(srv, tmp_path, max_attempts=3))
        r = c.run(make_tasks(prompt, 1))[0]
    assert not r.ok and r.error.startswith("gave up after 3 attempts: HTTP 503")
    assert srv.count == 3 and r.http_calls == 3


def test_timeouts_retried_then_deadline(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(fault_rate=1.0, fault_kinds=("timeout",), timeout_sleep=3.0) as srv:
        c = make_client(settings_for(srv, tmp_path, request_timeout_s=0.2, deadline_s=0.7, max_attempts=50))
        r = c.run(make_tasks(prompt, 1))[0]
    assert not r.ok and "deadline of 0.7s exceeded" in r.error
    # The deadline can cut the last attempt before its request reaches the server: the client
    # counts it, the server does not.
    assert 2 <= srv.count <= 4 and srv.count <= r.http_calls <= srv.count + 1


def test_dropped_connection_retried(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=["drop", "drop"]) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=1))
        r = c.run(make_tasks(prompt, 1))[0]
    assert r.ok and r.http_calls == 3 and srv.count == 3


@pytest.mark.parametrize("kind", ["500", "503", "429"])
def test_each_retryable_status_retried_once(tmp_path, api_key, kind):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=[kind]) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=1))
        r = c.run(make_tasks(prompt, 1))[0]
    assert r.ok and r.http_calls == 2 and [q.status for q in srv.requests] == [int(kind), 200]
