"""`infir report` shows the run's human audits (`infir audit score`), or says none was made.

The sample run (offline backend) is audited with labels made by the offline rules standing in for
a person (tests/audit_rules.py), scored by `infir audit score`, and the report's figures are
checked against the counts of the labels themselves."""

from __future__ import annotations

import json
from pathlib import Path


from audit_rules import write_rule_labels
from conftest import run_infir
from report_fixtures import report_of, run, sample_run  # noqa: F401
from pipeline.audit.command import prepare


def _audited(run: Path, name: str = "rules") -> tuple[Path, list[dict]]:
    audit = prepare(run, rows=40, seed=13, name=name, per_stratum=None)
    labels = write_rule_labels(audit)
    code, _, err = run_infir("audit", "score", str(audit))
    assert code == 0, err
    return audit, [json.loads(x) for x in labels.read_text().splitlines()]


def test_without_an_audit_the_report_says_none_was_made(run):
    report, html = report_of(run)
    assert report["audit"] == {"audits": [], "warnings": []}
    assert "No human audit was made" in html


def test_the_report_shows_the_audits_figures(run):
    audit, labels = _audited(run)
    sample = {r["row_id"]: r["stratum"] for r in json.loads((audit / "sample.json").read_text())["rows"]}
    report, html = report_of(run)
    (shown,) = report["audit"]["audits"]
    # By hand from the label lines: accepted rows labelled valid / accepted rows labelled.
    accepted = [x["valid"] for x in labels if sample[x["row_id"]] == "accepted"]
    assert shown["precision"]["n"] == len(accepted) > 0 and shown["precision"]["valid"] == sum(accepted)
    rejected = [x["valid"] for x in labels if sample[x["row_id"]] == "rejected_judge"]
    assert shown["strata"]["rejected_judge"]["n"] == len(rejected) > 0
    assert shown["strata"]["rejected_judge"]["valid"] == sum(rejected)
    assert "rejected_first_judge" not in shown["strata"]  # no cascade here: an empty stratum is not shown
    assert shown["labelled"] == shown["sample_size"] == len(labels) and shown["annotators"] == 1
    scored = json.loads((audit / "audit.json").read_text())
    p = scored["precision"]
    assert f"{p['share']:.1%} [{p['low']:.1%}, {p['high']:.1%}] ({p['valid']}/{p['n']})" in html
    r = scored["reweighted_valid_share"]
    assert f"{r['share']:.1%} [{r['low']:.1%}, {r['high']:.1%}]" in html
    assert "offline-rules" not in html  # annotators are counted, not named


def test_an_audit_of_an_earlier_verify_output_is_left_out(run):
    audit, _ = _audited(run)
    sample = json.loads((audit / "sample.json").read_text())
    sample["created_from"]["verify"] = "0" * 64  # drawn before verify was rerun
    (audit / "sample.json").write_text(json.dumps(sample))
    report, html = report_of(run)
    assert report["audit"]["audits"] == [] and "earlier verify output" in report["audit"]["warnings"][0]
    assert "No human audit was made" in html


def test_a_broken_audit_json_is_one_line_naming_file_and_key(run):
    audit, _ = _audited(run)
    scored = json.loads((audit / "audit.json").read_text())
    scored["precision"]["share"] = "high"
    (audit / "audit.json").write_text(json.dumps(scored))
    code, _, err = run_infir("report", str(run), "--no-hardness")
    assert code == 2 and "Traceback" not in err
    line = " ".join(err.split())
    assert "audit.json: not an audit score: precision.share" in line, err
