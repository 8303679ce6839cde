"""Shared helpers and fixtures for tests/llm/ (import with `from llm_fixtures import ...`).

Also a subprocess entry point for the kill -9 test:
    python tests/llm_fixtures.py child --base-url URL --cache PATH --prompts-dir DIR --n 200 --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
for p in (str(TESTS), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import pytest  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.llm import LLMSettings, LLMTask, Prompt, default_params, load_prompt  # noqa: E402

KEY_ENV = "INFIR_TEST_OPENAI_KEY"

PROMPT_TEXT = """\
Judge prompt used by the LLM client tests.
expected_output_tokens: 50
### system
You judge whether a passage answers a query.
### user
Item {{ i }}. Query: {{ query }}
{{ passage | block("passage") }}
Answer in JSON.
"""


class Verdict(BaseModel):
    label: str
    score: int
    reasons: list[str]


class VerdictV2(BaseModel):  # same fields plus one: a different output schema
    label: str
    score: int
    reasons: list[str]
    confidence: float


def write_prompt(directory: Path, name: str = "judge", text: str = PROMPT_TEXT) -> Prompt:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.md").write_text(text, encoding="utf-8")
    return load_prompt(name, directory)


def settings_for(server: FakeOpenAIServer | str, tmp_path: Path, **kw: Any) -> LLMSettings:
    base = dict(
        backend="openai",
        base_url=server if isinstance(server, str) else server.base_url,
        api_key_env=KEY_ENV,
        concurrency=8,
        request_timeout_s=5.0,
        deadline_s=30.0,
        backoff_base_s=0.005,
        backoff_max_s=0.05,
        cache_path=tmp_path / "cache" / "llm.sqlite3",
    )
    base.update(kw)
    return LLMSettings(**base)


def make_tasks(
    prompt: Prompt, n: int, model: str = "gpt-4o-mini", params: dict[str, Any] | None = None,
    output_model: type[BaseModel] = Verdict, start: int = 0,
) -> list[LLMTask]:
    params = params if params is not None else default_params(model, temperature=0.0, max_tokens=200)
    return [
        LLMTask(
            key_id=str(i), prompt=prompt,
            variables={"i": i, "query": f"what is thing {i}", "passage": f"Thing {i} is a kind of widget."},
            output_model=output_model, model=model, params=dict(params),
        )
        for i in range(start, start + n)
    ]


_ITEM_RE = re.compile(r"Item (\d+)\.")


def item_of(body: dict[str, Any]) -> int:
    """The task index a recorded request belongs to (from its first user message)."""
    for m in body["messages"]:
        if m["role"] == "user":
            return int(_ITEM_RE.search(m["content"]).group(1))  # type: ignore[union-attr]
    raise AssertionError("no user message")


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


# -- subprocess entry point (kill -9 test) ---------------------------------------------------------


def _child(argv: list[str]) -> None:
    from pipeline.llm import make_client

    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--prompts-dir", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    settings = LLMSettings(
        backend="openai", base_url=a.base_url, api_key_env=KEY_ENV, concurrency=a.concurrency,
        cache_path=Path(a.cache), backoff_base_s=0.01, backoff_max_s=0.1,
    )
    client = make_client(settings)
    results = client.run(make_tasks(load_prompt("judge", Path(a.prompts_dir)), a.n))
    rows = [
        {"key_id": r.key_id, "ok": r.ok, "error": r.error, "cached": r.cached,
         "value": r.value.model_dump() if r.value is not None else None}
        for r in results
    ]
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"results": rows, "totals": client.totals.as_dict()}, f)
    os.replace(tmp, a.out)
    client.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        _child(sys.argv[2:])
    else:
        raise SystemExit("usage: llm_fixtures.py child ...")
