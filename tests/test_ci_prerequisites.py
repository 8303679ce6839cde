"""A test that needs something from outside the repository (../shared/data, the system Chromium)
skips where it is absent, saying what, and fails under CI=true, where a skip would hide it
(conftest.require; issue #28)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, require


def _outcome() -> BaseException | None:
    """What require() raised for a missing prerequisite. Caught by hand: a skip raised inside
    pytest.raises(pytest.fail.Exception) would skip this test rather than fail it."""
    try:
        require(False, "no chromium here")
    except BaseException as e:  # pytest's skip and fail are BaseExceptions
        return e
    return None


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_prerequisite_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    raised = _outcome()
    assert isinstance(raised, pytest.fail.Exception) and "no chromium here; CI=true" in str(raised), raised


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_a_missing_prerequisite_skips_elsewhere(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    raised = _outcome()
    assert isinstance(raised, pytest.skip.Exception) and "no chromium here" in str(raised), raised


def test_a_present_prerequisite_runs_the_test(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require(True, "anything") is None


def test_the_shared_data_and_browser_tests_go_through_require():
    """No test skips for the shared data or Chromium by itself: a bare pytest.skip, skipif or
    importorskip for them would skip under CI again."""
    skip = re.compile(r"pytest\.(skip|importorskip)\(|mark\.skipif")
    needs = re.compile(r"msmarco|shared|eval.topics|chromium|playwright", re.IGNORECASE)
    own = {Path(__file__).resolve(), (REPO / "tests" / "conftest.py").resolve()}
    skips, bare = 0, []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.resolve() in own:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if skip.search(line):
                skips += 1
                # the call and the next two lines: a reason often sits on its own line
                if needs.search(" ".join(lines[n:n + 3])):
                    bare.append(f"{path.relative_to(REPO)}:{n + 1}: {line.strip()}")
    assert skips, "found no skip at all: the scan no longer reads the tests"
    assert not bare, bare
