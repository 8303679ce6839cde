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


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(present: bool, what: str) -> None:
    """Skip the calling test when something it needs from outside the repository is absent
    (../shared/data, the system Chromium), saying what; under CI=true fail it instead. CI has all of
    them (.ci/run installs Chromium), so there a missing one is a broken set-up, and a skip would
    let the tests that need it (kills, concurrency, faults, the browser) pass unseen."""
    if present:
        return
    if under_ci():
        pytest.fail(f"{what}; CI=true, where a missing prerequisite fails the test instead of skipping it",
                    pytrace=False)
    pytest.skip(what)


def require_msmarco() -> Path:
    require((MSMARCO / "corpus.jsonl").is_file(),
            f"{MSMARCO} not present (shared data is only beside CI and developer checkouts)")
    return MSMARCO


def require_chromium():
    """The system Chromium's path and playwright's sync API, which drives it (the browser tests)."""
    path = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    require(path is not None, "no system Chromium (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright import sync_api
    except ImportError:
        require(False, "playwright not installed (pip install '.[dev]')")
    return path, sync_api


@pytest.fixture
def msmarco() -> Path:
    return require_msmarco()


@pytest.fixture
def eval_topics() -> Path:
    require(EVAL_TOPICS.is_dir(), f"{EVAL_TOPICS} not present (shared data is only beside CI and developer checkouts)")
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
