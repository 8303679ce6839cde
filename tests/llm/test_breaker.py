"""The breaker (`llm.stop_after_same_errors`): when the first N HTTP answers of a client (a stage)
are all the same non-retryable error or the same 5xx, the client stops sending and the stage stops
with one line quoting the server's message and the setting to try. Through the real openai SDK
against the local server; the rule itself on BackendErrors."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402

from conftest import SAMPLE, run_infir  # noqa: E402
from llm_fixtures import api_key, make_tasks, settings_for, write_prompt  # noqa: E402,F401
from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.llm import BackendError, make_client  # noqa: E402
from pipeline.llm.breaker import Breaker  # noqa: E402

LLAMA_FORMS = ("text", "json_object")  # what llama-cpp-python's server takes


class _Client:
    stop_reason = None


def _err(status, message="The server had an error", *, retryable=None, fatal=False, kind="status"):
    if retryable is None:
        retryable = status is not None and (status >= 500 or status in (408, 409, 429))
    return BackendError(message, status=status, retryable=retryable, fatal=fatal, kind=kind)


def _feed(breaker: Breaker, answers) -> _Client:
    c = _Client()
    for a in answers:
        breaker.answer(c, a)
    return c


def test_the_rule_is_the_first_n_answers_all_the_same():
    # N equal 500s trip it; N - 1 do not.
    assert _feed(Breaker(3), [_err(500)] * 3).stop_reason is not None
    assert _feed(Breaker(3), [_err(500)] * 2).stop_reason is None
    # A success, or a different answer, among the first N disarms it for good (nothing is reset).
    assert _feed(Breaker(3), [_err(500), None] + [_err(500)] * 10).stop_reason is None
    assert _feed(Breaker(3), [_err(500), _err(503)] + [_err(500)] * 10).stop_reason is None
    assert _feed(Breaker(3), [_err(500, "a"), _err(500, "b")] + [_err(500, "a")] * 10).stop_reason is None
    assert _feed(Breaker(3), [_err(400, "bad"), _err(500)] + [_err(400, "bad")] * 10).stop_reason is None
    # Not answers: timeouts, dropped connections, 429s and fatal errors neither count nor disarm.
    noise = [_err(None, "timed out", retryable=True, kind="timeout"), _err(None, "reset", retryable=True, kind="connection"),
             _err(429, "Rate limit reached"), _err(401, "bad key", fatal=True)]
    assert _feed(Breaker(3), noise + [_err(400, "bad")] * 2 + noise + [_err(400, "bad")]).stop_reason is not None
    # 0 disables it.
    assert _feed(Breaker(0), [_err(500)] * 100).stop_reason is None
    # Non-retryable errors count as the same wall (a 400 is answered once per task).
    c = _feed(Breaker(2), [_err(400, "Unsupported value: 'reasoning_effort'")] * 2)
    assert c.stop_reason.startswith("the server's first 2 answers were all the same error, HTTP 400: Unsupported value")
    # ... and a 4xx that does not name the response format gets no structured_output hint.
    assert "structured_output" not in c.stop_reason.split("(llm.stop_after")[0]


def test_the_line_quotes_the_server_and_names_the_setting_to_try():
    long_msg = "1 validation error:\n  {'loc': ('body', 'response_format', 'type')} " + "x" * 1000
    c = _feed(Breaker(2), [_err(500, long_msg)] * 2)
    line = c.stop_reason
    assert "\n" not in line and len(line) < 500
    assert "HTTP 500: 1 validation error: {'loc': ('body', 'response_format', 'type')}" in line
    assert 'try llm.structured_output = "json_object"' in line and line.endswith("(llm.stop_after_same_errors)")
    # Sending json_object already: the other form is the one to try.
    assert 'try llm.structured_output = "json_schema"' in _feed(Breaker(2, "json_object"), [_err(500, long_msg)] * 2).stop_reason
    # A bare 500 while json_schema is sent: the form is still the likely culprit, said as such.
    assert "if the server does not take the json_schema response_format" in _feed(Breaker(2), [_err(500)] * 2).stop_reason
    # An earlier stop reason (a fatal error) is kept.
    c = _Client()
    c.stop_reason = "aborted: HTTP 401: bad key"
    for _ in range(3):
        Breaker(2).answer(c, _err(500))
    assert c.stop_reason == "aborted: HTTP 401: bad key"


def test_client_stops_sending_after_n_same_500s_and_the_rest_fail_with_the_line(tmp_path, api_key):
    """llama-cpp-python's answer to the json_schema form, 30 tasks x 6 attempts: without the breaker
    180 requests; with N = 10 about 10 (plus those already in flight)."""
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(response_formats=LLAMA_FORMS) as srv:
        client = make_client(settings_for(srv, tmp_path, stop_after_same_errors=10, max_attempts=6, concurrency=4))
        results = client.run(make_tasks(prompt, 30))
        client.close()
    assert client.stop_reason is not None and "HTTP 500" in client.stop_reason
    assert "HTTP 500: 1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type')," \
        in client.stop_reason and 'try llm.structured_output = "json_object"' in client.stop_reason
    assert "app.py" not in client.stop_reason  # the message's first paragraph, not where in its code
    assert 10 <= srv.count <= 10 + 4, srv.count  # N answers, plus at most `concurrency` in flight
    assert all(not r.ok for r in results)
    assert sum(client.stop_reason in (r.error or "") for r in results) >= 20  # the rest never sent


def test_a_success_first_disarms_it(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(script=[None] + ["400"] * 100) as srv:
        client = make_client(settings_for(srv, tmp_path, stop_after_same_errors=5, concurrency=1))
        results = client.run(make_tasks(prompt, 12))
        client.close()
    assert client.stop_reason is None and srv.count == 12
    assert results[0].ok and all(r.error.startswith("HTTP 400") for r in results[1:])


def test_stage_stops_with_one_line_through_the_cli(tmp_path):
    """`infir build --until generate` against a server that answers every request 400: exit 2, one
    line naming the server's message; the server saw N requests (+ concurrency), not one per row."""
    with FakeOpenAIServer(fault_fn=lambda n, body: "400") as srv:
        code, out, err = run_infir(
            "build", "--until", "generate", "--backend", "openai", "--set", f"source.path={SAMPLE}", "--set", f"llm.base_url={srv.base_url}",
            "--set", "llm.stop_after_same_errors=4", "--set", "llm.concurrency=2", "--set", "llm.backoff_base_s=0.01",
            env={"OPENAI_API_KEY": "sk-test-breaker"},
        )
        count = srv.count
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (out, err)
    assert lines[-1].startswith("error: ") and "Traceback" not in err
    assert "stopped: the server's first 4 answers were all the same error, HTTP 400: Invalid parameter: messages" in lines[-1]
    assert "rerun to resume" in lines[-1]
    assert sum("answers were all the same error" in ln for ln in lines) == 1  # one line, not a log line too
    assert 4 <= count <= 4 + 2, count
