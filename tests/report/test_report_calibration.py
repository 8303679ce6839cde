"""`infir report` shows the judge cascade's calibration (`infir calibrate-judge`, runs/<run>/calibration/
judge.json) with its threshold and agreement figures, or says none was made."""

from __future__ import annotations

import json
from pathlib import Path


from conftest import run_infir
from report_fixtures import report_of, run, sample_run  # noqa: F401
from pipeline.generation import cascade

FIRST = {"check": "positive_fits", "passed": False, "reason": "r"}


def _pairs():
    """Six rows (first judge's failure confidence, the reasoning judge's failed checks): it accepts
    rows 1, 3 and 4 (the good rows), fails 0, 2 and 5."""
    def first(conf):
        return cascade.FirstJudgment([{**FIRST, "confidence": conf}] if conf else
                                     [{**FIRST, "passed": True, "confidence": 1.0}], "logprobs")
    rows = [(0.95, ["positive_fits"]), (0.95, []), (0.8, ["hn1_fits"]), (0.6, []), (None, []), (None, ["hn2_fits"])]
    return [(first(c), failed) for c, failed in rows]


def _write(run: Path, cal: dict) -> None:
    path = cascade.calibration_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal))


def test_without_a_calibration_the_report_says_none_was_made(run):
    report, html = report_of(run)
    assert report["calibration"] is None and "No judge calibration was made" in html


def test_the_report_shows_the_threshold_and_agreement(run):
    # What `calibrate-judge` writes: cascade.calibrate's figures plus the models and the seed.
    cal = {"first_model": "gpt-4o-mini", "judge_model": "o3-mini", "seed": 13, **cascade.calibrate(_pairs(), 0.4)}
    _write(run, cal)
    report, html = report_of(run)
    shown = report["calibration"]
    # By hand: 0.6 rejects rows 0-3 (good rows 1 and 3 of 3: 2/3 > 40%); 0.8 rejects 0-2 (1/3 <= 40%):
    # the lowest qualifying threshold saves the most. It lets through rows 3-5, of which 5 is bad
    # (the judge fails it): false accepts 1/3.
    assert shown["recommended_threshold"] == 0.8 and shown["against"] == "judge"
    at = shown["at_recommended"]
    assert (at["false_reject"]["k"], at["false_reject"]["n"]) == (1, 3)
    assert (at["false_accept"]["k"], at["false_accept"]["n"]) == (1, 3) and at["saving"] == 0.5
    lo, hi = cascade.wilson(1, 3)
    assert f"33.3% [{lo:.1%}, {hi:.1%}] (1/3)" in html
    assert "gpt-4o-mini" in html and "o3-mini" in html and ">0.8<" in html and "50.0%" in html
    assert "on 6 rows (seed 13)" in html and "<th>false reject</th>" in html
    assert "The cascade is off in this run's config" in html  # the sample run has verify.cascade = false


def test_a_calibration_against_labels_says_so(run):
    cal = {"first_model": "gpt-4o-mini", "judge_model": "people (audit a)", "seed": None,
           **cascade.calibrate(_pairs(), 0.4), "per_check": {}, "against": "labels", "labels": "a"}
    _write(run, cal)
    _, html = report_of(run)
    assert "against people's labels (audit a) on 6 labelled rows" in html and "seed None" not in html
    assert "<th>false reject</th>" not in html  # no per-check table: people answer questions, not checks


def test_a_broken_calibration_is_one_line(run):
    _write(run, {"rows": 3, "recommended_threshold": "high"})
    code, _, err = run_infir("report", str(run), "--no-hardness")
    assert code == 2 and "Traceback" not in err
    assert "judge.json: not a judge calibration:" in " ".join(err.split()), err
