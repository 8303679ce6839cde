"""`infir -v` shows more (the LLM client's retries, logged at DEBUG) and `infir -q` shows only errors
(no progress lines, no warnings), on the real CLI against the local OpenAI-compatible server: every
7th request is answered 500 once (a retry to log) and the generator's model has no price (a warning)."""

from __future__ import annotations

import pytest

from conftest import REPO, SAMPLE, run_infir
from openai_server import FakeOpenAIServer

KEY = "sk-test-verbosity"


def build(server, tmp_path, name: str, *flags: str) -> str:
    """`infir [flags] build --until generate` in a run and cache of its own, in `tmp_path`; its output."""
    args = ["build", "--config", str(REPO / "configs/sample.toml"), "--set", f'source.path="{SAMPLE}"',
            "--backend", "openai", "--set", f'llm.base_url="{server.base_url}"', "--set", "source.sample_queries=6",
            "--set", "llm.backoff_base_s=0.01", "--set", 'generate.model="house-model-1"',
            # A short interval: periodic progress lines are likely between the first and the last
            # (never asserted on: the stage's closing progress line is, as it is always printed).
            "--set", "run.progress_interval_s=0.05", "--set", f'llm.cache_path="{tmp_path / name}.sqlite3"',
            "--run", name, "--until", "generate"]
    rc, out, err = run_infir(*flags, *args, cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert rc == 0, err[-2000:]
    return out + err


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    # Module-scoped (three builds, checked by three tests): it runs before the per-test chdir into
    # a temporary folder, so every path it makes is under its own temporary folder.
    tmp_path = tmp_path_factory.mktemp("verbosity")
    with FakeOpenAIServer(fault_fn=lambda n, body: "500" if n % 7 == 0 else None) as server:
        runs = {name: build(server, tmp_path, name, *flags)
                for name, flags in (("default", ()), ("verbose", ("-v",)), ("quiet", ("-q",)))}
        assert server.count >= 3 * (6 + 1)  # each run sent its 6 requests and at least one retry
    return runs


def test_default_shows_progress_and_warnings_but_not_retries(outputs):
    text = outputs["default"]
    assert "[progress] generate:" in text and "(done)" in text
    assert "WARNING" in text and "house-model-1" in text  # the model without a price
    assert "DEBUG" not in text and "retry 1/" not in text


def test_verbose_shows_the_retries_as_debug_lines(outputs):
    text = outputs["verbose"]
    debug = [line for line in text.splitlines() if line.startswith("DEBUG pipeline.")]
    assert any("HTTP 500" in line and "retry 1/" in line for line in debug), text[-3000:]
    assert "[progress] generate:" in text and "house-model-1" in text  # and everything the default shows


def test_quiet_shows_no_progress_lines_and_no_warnings(outputs):
    text = outputs["quiet"]
    assert "[progress]" not in text, text[-3000:]
    assert "WARNING" not in text and "DEBUG" not in text and "house-model-1" not in text, text[-3000:]
