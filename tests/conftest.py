"""Shared fixtures: every test runs in its own temp dir, offline, with no API key around."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tests live in folders that mirror the package (tests/llm/, tests/stages/, ...); the shared helpers
# (servers, fixtures) at tests/ and a few test modules other tests reuse are imported by plain name.
for _d in [Path(__file__).resolve().parent, *sorted(p for p in Path(__file__).resolve().parent.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))]:
    if str(_d) not in sys.path:
        sys.path.append(str(_d))
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"
MSMARCO = SHARED_DATA / "msmarco-dev-sample"
EVAL_TOPICS = SHARED_DATA / "eval-topics"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Relative paths (runs/, releases/, .cache/) land in the test's temp dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield


@pytest.fixture
def msmarco() -> Path:
    if not (MSMARCO / "corpus.jsonl").is_file():
        pytest.skip(f"{MSMARCO} not present (shared data is only beside CI and developer checkouts)")
    return MSMARCO


@pytest.fixture
def eval_topics() -> Path:
    if not EVAL_TOPICS.is_dir():
        pytest.skip(f"{EVAL_TOPICS} not present")
    return EVAL_TOPICS


def make_config(**overrides):
    """The sample config with overrides (dotted keys), source pointed at the bundled sample."""
    from pipeline.config import load_config

    base = {"source.path": str(SAMPLE)}
    base.update(overrides)
    return load_config(REPO / "configs" / "sample.toml", base)


def run_infir(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """The real CLI in a subprocess: exit code, stdout, stderr."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd or os.getcwd(),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr
