"""`infir audit` in a real browser (acceptance 1 of issue 29): the served page, 10 rows labelled
with the keyboard, a reload, the server killed and restarted, and `audit score` giving the
figures recomputed here by hand, with a second annotator's file for kappa.

Headless Chromium from the system packages, driven by playwright (as tests/report/test_report_browser.py);
skipped where either is missing, failed under CI=true (conftest.require_chromium). The server is the
real CLI in a subprocess, so killing it is a kill.
With INFIR_AUDIT_PNG=<path>, the test also saves its screenshot there (docs/audit.png is made so).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit_fixtures import make_audit_run
from conftest import require_chromium, run_infir

Z = 1.959964
QIDS = ("p_fits", "hn1_fits", "hn2_fits", "edits_minimal")
KEY = {"yes": "y", "no": "n", "unsure": "u"}


def plan(i: int) -> tuple[dict, bool]:
    """What the test's person answers on the i-th row of the page."""
    answers = {"p_fits": "no" if i % 3 == 2 else "yes", "hn1_fits": "yes", "hn2_fits": "unsure" if i % 4 == 1 else "yes",
               "edits_minimal": "no" if i == 6 else "yes"}
    return answers, i % 3 != 2


def _serve(cwd: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "audit", "runs/fixture", "--rows", "16", "--seed", "13",
                             "--annotator", "alice"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the server prints its URL once it listens
    if not line.startswith("open http://127.0.0.1:"):
        proc.kill()
        pytest.fail(f"no URL from infir audit: {line!r} {proc.stderr.read()}")
    return proc, line.split()[1]


def _label(page, i: int, answers: dict, valid: bool) -> None:
    """Answer the row on screen with the keyboard only, save it (Enter), see the judge, go on (Enter)."""
    page.locator(f'#pos[data-index="{i}"]').wait_for()
    page.keyboard.press("1")
    for q in QIDS:
        page.keyboard.press(KEY[answers[q]])
    page.keyboard.press("v" if valid else "x")
    page.keyboard.press("Enter")
    page.locator('#state[data-saved="1"]').wait_for()
    assert page.locator("#judge").is_visible()  # unblinded once answered


def _wilson(k: int, n: int) -> tuple[float, float]:
    return _wilson_p(k / n, n)


def _wilson_p(p: float, n: float) -> tuple[float, float]:
    d = 1 + Z * Z / n
    c = (p + Z * Z / (2 * n)) / d
    h = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _kappa(a: list, b: list) -> float:
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum(a.count(c) * b.count(c) for c in set(a) | set(b)) / (n * n)
    return (po - pe) / (1 - pe)


def test_label_ten_rows_reload_kill_restart_and_score(tmp_path):
    chromium, sync_api = require_chromium()
    make_audit_run(tmp_path)
    audit = tmp_path / "runs" / "fixture" / "audit" / "seed13"
    proc, url = _serve(tmp_path)
    sample = json.loads((audit / "sample.json").read_text())
    ids = [r["row_id"] for r in sample["rows"]]
    final = {}  # row id -> (answers, valid) as last answered
    png = tmp_path / "audit.png"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith("http://127.0.0.1:") else outside.append(r.url))
            page.goto(url)
            assert page.locator("#judge").is_hidden()  # blind before the first answer
            for i in range(5):
                answers, valid = plan(i)
                _label(page, i, answers, valid)
                final[ids[i]] = (answers, valid)
                if i == 1:
                    page.screenshot(path=str(png), full_page=True)
                page.keyboard.press("Enter")  # saved row: next
            page.reload()
            page.locator('#pos[data-index="5"]').wait_for()  # resumes at the first unlabelled row
            assert page.locator("#progress").get_attribute("data-labelled") == "5"
            page.keyboard.press("ArrowLeft")  # back: the answers are still there, and the judge
            page.locator('#pos[data-index="4"]').wait_for()
            assert page.locator('.q[data-q="p_fits"] button.on').inner_text() == f"{plan(4)[0]['p_fits']} ({plan(4)[0]['p_fits'][0]})"
            assert page.locator("#judge").is_visible()
            answers, valid = plan(4)
            page.keyboard.press("x" if valid else "v")  # changes its mind: a later line supersedes
            page.keyboard.press("Enter")
            page.locator('#state[data-saved="1"]').wait_for()
            final[ids[4]] = (answers, not valid)
            page.keyboard.press("ArrowRight")
            for i in (5, 6):
                answers, valid = plan(i)
                _label(page, i, answers, valid)
                final[ids[i]] = (answers, valid)
                page.keyboard.press("Enter")
            page.locator('#pos[data-index="7"]').wait_for()
            proc.kill()  # mid-way, no goodbye
            proc.wait()
            with open(audit / "labels.jsonl", "ab") as f:  # and as if it died in the middle of a write
                f.write(b'{"row_id": "' + ids[7].encode() + b'", "annot')
            proc, url = _serve(tmp_path)
            page.goto(url)
            page.locator('#pos[data-index="7"]').wait_for()
            assert page.locator("#progress").get_attribute("data-labelled") == "7"  # nothing lost
            for i in (7, 8, 9):
                answers, valid = plan(i)
                _label(page, i, answers, valid)
                final[ids[i]] = (answers, valid)
                page.keyboard.press("Enter")
            page.locator('#pos[data-index="10"]').wait_for()
            assert page.locator("#progress").get_attribute("data-labelled") == "10"
            assert not errors, errors
            browser.close()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert outside == []
    assert png.stat().st_size > 10_000
    if os.environ.get("INFIR_AUDIT_PNG"):
        Path(os.environ["INFIR_AUDIT_PNG"]).write_bytes(png.read_bytes())
    _check_score(audit, sample, ids, final)


def _check_score(audit: Path, sample: dict, ids: list[str], final: dict) -> None:
    # bob labels rows 0..5 by hand: agrees with alice except on row 0's validity and row 3's p_fits
    bob = {}
    for i in range(6):
        answers, valid = final[ids[i]]
        answers = {**answers, "p_fits": "unsure"} if i == 3 else answers
        bob[ids[i]] = (answers, (not valid) if i == 0 else valid)
    (audit / "labels-bob.jsonl").write_text("".join(
        json.dumps({"row_id": rid, "annotator": "bob", "answers": a, "valid": v, "note": "", "at": "2026-12-07T12:00:00+00:00"}) + "\n"
        for rid, (a, v) in bob.items()))
    code, _, err = run_infir("audit", "score", str(audit))
    assert code == 0, err
    assert "the last line is cut short" not in err and "not a whole line" in err  # the cut line, noted once
    got = json.loads((audit / "audit.json").read_text())
    stratum = {r["row_id"]: r["stratum"] for r in sample["rows"]}
    # a row is valid by its annotators' majority, a tie (alice and bob split) not valid
    valid = {rid: (a[1] + (bob[rid][1] if rid in bob else 0)) * 2 > 1 + (rid in bob) for rid, a in final.items()}
    assert got["labelled"] == 10 and got["annotators"] == ["alice", "bob"] and got["sample_size"] == 16
    for s in sample["strata"]:
        mine = [rid for rid in valid if stratum[rid] == s]
        k = sum(valid[rid] for rid in mine)
        f = got["strata"][s]
        assert (f["valid"], f["n"]) == (k, len(mine))
        if mine:
            assert (f["low"], f["high"]) == pytest.approx(_wilson(k, len(mine)), abs=1e-6)
    assert got["precision"] == got["strata"]["accepted"] and got["precision"]["n"] > 0
    pop = {s: v["population"] for s, v in sample["strata"].items()}
    labelled = {s: sum(stratum[rid] == s for rid in valid) for s in pop}
    w = [pop[stratum[rid]] / labelled[stratum[rid]] for rid in valid]
    share = sum(wi for wi, rid in zip(w, valid) if valid[rid]) / sum(w)
    deff = len(w) * sum(x * x for x in w) / sum(w) ** 2  # Kish: the Wilson interval at n / deff
    r = got["reweighted_valid_share"]
    assert (r["share"], r["low"], r["high"]) == pytest.approx((share, *_wilson_p(share, len(w) / deff)), abs=1e-6)
    shared = ids[:6]
    assert got["kappa"]["valid"] == pytest.approx(_kappa([final[x][1] for x in shared], [bob[x][1] for x in shared]), abs=1e-6)
    assert got["kappa"]["p_fits"] == pytest.approx(
        _kappa([final[x][0]["p_fits"] for x in shared], [bob[x][0]["p_fits"] for x in shared]), abs=1e-6)
    assert got["disagreements"] == [ids[0], ids[3]]
