"""The sample run through verify (offline backend), built once per session, and a copy per test to
report on: the report's audit and calibration tests add files to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SAMPLE, run_infir


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report-sample")
    code, _, err = run_infir("build", "--until", "verify", "--set", f"source.path={SAMPLE}", cwd=work)
    assert code == 0, err
    return work / "runs" / "sample"


@pytest.fixture
def run(sample_run, tmp_path) -> Path:
    dst = tmp_path / "runs" / "sample"
    shutil.copytree(sample_run, dst)
    return dst


def report_of(run: Path) -> tuple[dict, str]:
    """`infir report` on `run`: its report.json and report.html."""
    code, _, err = run_infir("report", str(run), "--no-hardness")
    assert code == 0, err
    return json.loads((run / "report.json").read_text()), (run / "report.html").read_text()
