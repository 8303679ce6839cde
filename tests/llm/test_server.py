"""The local OpenAI-compatible test server itself: answers, faults, subprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import httpx2  # noqa: E402
import pytest  # noqa: E402

from llm_fixtures import TESTS, Verdict  # noqa: E402
from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.llm.openai_api.request import response_format_for  # noqa: E402

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Item 1. q"}],
    "response_format": response_format_for(Verdict),
}


def post(srv, body=BODY):
    return httpx2.post(f"{srv.base_url}/chat/completions", json=body, headers={"authorization": "Bearer sk-x"})


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_default_answer_is_schema_valid_and_deterministic(kind):
    with FakeOpenAIServer(server=kind) as srv:
        a, b = post(srv).json(), post(srv).json()
        repair = {**BODY, "messages": BODY["messages"] + [{"role": "user", "content": "fix it"}]}
        c = post(srv, repair).json()
        assert srv.count == 3 and srv.counts == {"/v1/chat/completions": 3}
        assert srv.requests[0].headers["authorization"] == "Bearer sk-x"
        assert srv.requests[0].body == BODY
    content = a["choices"][0]["message"]["content"]
    v = Verdict.model_validate_json(content)
    assert len(v.reasons) == 2 and 0 <= v.score < 100
    assert b["choices"][0]["message"]["content"] == content
    assert c["choices"][0]["message"]["content"] == content  # same conversation start, same answer
    assert a["usage"]["prompt_tokens"] > 0 and a["choices"][0]["finish_reason"] == "stop"


def test_scripted_faults_shape():
    script = ["429", "500", "malformed", "schema", "length", "refusal", "empty", "400"]
    with FakeOpenAIServer(script=script, retry_after="3") as srv:
        rs = [post(srv) for _ in script]
    assert [r.status_code for r in rs] == [429, 500, 200, 200, 200, 200, 200, 400]
    assert rs[0].headers["retry-after"] == "3"
    assert rs[0].json()["error"]["code"] == "rate_limit_exceeded"
    ch = [r.json()["choices"] for r in rs[2:7]]
    with pytest.raises(ValueError):
        json.loads(ch[0][0]["message"]["content"])
    assert json.loads(ch[1][0]["message"]["content"]) == {"unexpected": True}
    assert ch[2][0]["finish_reason"] == "length"
    assert ch[3][0]["message"]["refusal"] and ch[3][0]["message"]["content"] is None
    assert ch[4] == []


def test_drop_closes_without_answer():
    with FakeOpenAIServer(script=["drop"]) as srv:
        with pytest.raises(httpx2.RemoteProtocolError):
            post(srv)
        assert post(srv).status_code == 200


def test_subprocess_mode():
    proc = subprocess.Popen([sys.executable, str(TESTS / "openai_server.py"), "--port", "0", "--server", "asyncio"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "READY" and line[1].startswith("http://127.0.0.1:")
        r = httpx2.post(f"{line[1]}/chat/completions", json=BODY)
        assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "REQUESTS 1" in out
