"""The dataset card shows the run's human audit (`infir audit score`), or says none was made; the
audit is part of a release's content, so an audit made after `write` needs a new version
(docs/release.md), and a release without one keeps the manifest it always had."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit_rules import write_rule_labels
from conftest import SAMPLE, run_infir
from pipeline.audit.command import prepare
from pipeline.errors import InfirError
from pipeline.release import verify_release, write_release
from pipeline.release.manifest import load_manifest
from release_fixtures import synthetic_accepted_table, synthetic_stats

AUDIT = {  # as pipeline/report/audit.py `audit_figures` passes it to the writer
    "name": "check", "sample_size": 40, "labelled": 30, "annotators": 2,
    "precision": {"valid": 18, "n": 20, "share": 0.9, "low": 0.699, "high": 0.9721},
    "strata": {"accepted": {"valid": 18, "n": 20, "share": 0.9, "low": 0.699, "high": 0.9721},
               "rejected_judge": {"valid": 1, "n": 10, "share": 0.1, "low": 0.0179, "high": 0.4042}},
    "reweighted_valid_share": {"population": 500, "share": 0.7612, "low": 0.6, "high": 0.87},
    "questions": {}, "kappa": {},
}


def _write(root: Path, stats: dict, **kw):
    return write_release(synthetic_accepted_table(rows=40, queries=30), stats, root, "audited", **kw)


def test_without_an_audit_the_card_says_none_was_made_and_the_manifest_has_no_audit(tmp_path):
    res = _write(tmp_path, synthetic_stats(40))
    card = (res.path / "README.md").read_text()
    assert "## Human audit" in card and "No human audit was made" in card
    assert "audit" not in load_manifest(res.path)


def test_the_card_shows_the_audit_and_an_audit_after_write_needs_a_new_version(tmp_path):
    first = _write(tmp_path, synthetic_stats(40))
    # The same rows with an audit are different content: refused under 1.0.0, naming what differs.
    with pytest.raises(InfirError, match=r"already exists with different content \(audit differ\)"):
        _write(tmp_path, {**synthetic_stats(40), "audit": [AUDIT]}, version="1.0.0")
    res = _write(tmp_path, {**synthetic_stats(40), "audit": [AUDIT]}, bump="minor")
    assert res.created and res.version == "1.1.0" and first.path != res.path
    assert load_manifest(res.path)["audit"] == [AUDIT]
    card = (res.path / "README.md").read_text()
    assert "Audit `check`: 30 of 40 sampled rows labelled by 2 annotator(s)" in card
    assert "Judge's precision (accepted rows judged valid): 90.0% [69.9%, 97.2%] (18/20)" in card
    assert "| rejected by the judge | 10.0% [1.8%, 40.4%] (1/10) |" in card
    assert "among the 500 rows of the sampled strata (reweighted by the sampling weights): 76.1% [60.0%, 87.0%]" in card
    assert "No human audit was made" not in card
    verify_release(res.path)  # the card's new section names no file


def test_write_stage_carries_the_runs_audit_into_a_new_version(tmp_path):
    """End to end: the sample run released, audited (offline-rule labels standing in for a person),
    scored; `infir write` refuses to re-describe 1.0.0 and `--bump minor` publishes the audit."""
    code, _, err = run_infir("build", "--until", "write", "--set", f"source.path={SAMPLE}")
    assert code == 0, err
    assert "No human audit was made" in (tmp_path / "releases/inf-ir-sample/1.0.0/README.md").read_text()
    audit = prepare(tmp_path / "runs" / "sample", rows=30, seed=13, name="rules", per_stratum=None)
    write_rule_labels(audit)
    code, _, err = run_infir("audit", "score", str(audit))
    assert code == 0, err
    code, _, err = run_infir("write", "--set", f"source.path={SAMPLE}")
    assert code == 2 and "audit differ" in " ".join(err.split()) and "Traceback" not in err
    code, _, err = run_infir("write", "--bump", "minor", "--set", f"source.path={SAMPLE}")
    assert code == 0, err
    scored = json.loads((audit / "audit.json").read_text())
    manifest = load_manifest(tmp_path / "releases/inf-ir-sample/1.1.0")
    (shown,) = manifest["audit"]
    assert shown["precision"] == scored["precision"] and shown["labelled"] == scored["labelled"] == 30
    assert shown["annotators"] == 1 and "offline-rules" not in json.dumps(manifest)  # counted, not named
    p = scored["precision"]
    card = (tmp_path / "releases/inf-ir-sample/1.1.0/README.md").read_text()
    assert f"{p['share']:.1%} [{p['low']:.1%}, {p['high']:.1%}] ({p['valid']}/{p['n']})" in card
