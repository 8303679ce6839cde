"""`infir report` in a real browser: the page opens from disk, sends no request, and its row browser
finds the rejected rows failing `hn2_fits` that `infir status` counts.

Headless Chromium from the system packages (`apt-get install chromium`; .ci/run installs it),
driven by playwright with the system executable. Where either is missing the test is skipped, and
fails under CI=true (conftest.require).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SAMPLE, require_chromium, run_infir

@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    """The sample run built to verify, and its report (no hardness: the browser does not need it)."""
    work = tmp_path_factory.mktemp("report-sample")
    code, _, err = run_infir("build", "--until", "verify", "--set", f"source.path={SAMPLE}", cwd=work)
    assert code == 0, err
    code, _, err = run_infir("report", "runs/sample", "--no-hardness", cwd=work)
    assert code == 0, err
    return work


def _status_failed(work: Path, check: str) -> int:
    code, out, err = run_infir("status", "runs/sample", cwd=work)
    assert code == 0, err
    m = re.search(rf"^\s*{check}: [\d.]+% pass \(([\d,]+) failed\)", out + err, re.M)
    assert m, out + err
    return int(m.group(1).replace(",", ""))


def test_report_files_and_json(sample_report):
    run = sample_report / "runs" / "sample"
    report = json.loads((run / "report.json").read_text())
    html = (run / "report.html").read_text()
    assert report["rows"] == 146 and report["browser"] == {"rows": 146, "of": 146, "sampled": False, "seed": 13}
    assert sum(report["funnel"]["status"].values()) == 146
    hn2 = next(c for c in report["funnel"]["checks"] if c["check"] == "hn2_fits")
    assert hn2["failed"] == _status_failed(sample_report, "hn2_fits") > 0
    # Self-contained: no URL the page could fetch (a CSP forbids fetching anyway).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "default-src 'none'" in html


def test_report_in_chromium(sample_report, tmp_path):
    chromium, sync_api = require_chromium()
    page_file = sample_report / "runs" / "sample" / "report.html"
    expected = _status_failed(sample_report, "hn2_fits")
    requests: list[str] = []

    def route(r):
        requests.append(r.request.url)
        if r.request.url == page_file.as_uri():
            r.continue_()
        else:
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", route)
            page.goto(page_file.as_uri())
            count = page.locator("#match-count")
            assert count.get_attribute("data-count") == "146"
            page.select_option("#f-status", "rejected")
            page.select_option("#f-reason", "hn2_fits")
            assert count.get_attribute("data-count") == str(expected)
            assert page.locator("#rows details.row.rejected").count() == expected
            # Every painted row names the check it was filtered by.
            assert page.locator("#rows details.row", has_text="hn2_fits").count() == expected
            first = page.locator("#rows details.row").first
            first.locator("summary").click()
            # The row's details are painted on opening: wait for them (a loaded machine is slow to).
            failed_row = first.locator("table.verdicts tr.fail", has_text="hn2_fits")
            failed_row.wait_for(state="attached", timeout=30_000)
            assert failed_row.count() == 1
            assert first.locator(".field mark").count() > 0  # I+/I- and Q+/Q- differences marked
            page.select_option("#f-reason", "any")
            page.fill("#f-search", "zzzz-no-such-text")
            assert count.get_attribute("data-count") == "0"
            page.fill("#f-search", "")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    # The page itself was the only request: nothing left the file.
    assert requests == [page_file.as_uri()], requests


def test_report_cli_errors(tmp_path):
    code, _, err = run_infir("report", "runs/nope")
    assert code == 2 and "runs/nope: no such run directory" in err
    Path("runs/empty").mkdir(parents=True)
    code, _, err = run_infir("report", "runs/empty")
    assert code == 2 and "no finished stage" in err
    code, _, err = run_infir("report", "a", "b", "c")
    assert code == 2 and "give one run directory, or two" in err


def test_write_copies_a_current_report_into_the_release(sample_report):
    run = sample_report / "runs" / "sample"
    code, _, err = run_infir("write", cwd=sample_report)
    assert code == 0, err
    release = sample_report / "releases" / "inf-ir-sample" / "1.0.0"
    manifest = json.loads((release / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"report.html", "report.json"} <= listed and "README.md" in listed
    assert (release / "report.html").read_bytes() == (run / "report.html").read_bytes()
    code, _, err = run_infir("write", "--verify", str(release), cwd=sample_report)
    assert code == 0, err


def test_stale_report_is_not_released(tmp_path):
    from pipeline.report import release_files
    from test_report_measures import make_run

    run = make_run(tmp_path)
    assert release_files(run) == {}  # no report yet
    code, _, err = run_infir("report", str(run), "--no-hardness")
    assert code == 0, err
    assert set(release_files(run)) == {"report.html", "report.json"}
    success = run / "verify" / "_SUCCESS.json"
    success.write_text(success.read_text().replace('"shards": []', '"shards": [{"name": "part-00000.parquet", "rows": 0, "sha256": "0"}]'))
    assert release_files(run) == {}  # verify changed after the report was made
