"""`infir calibrate-judge --labels runs/<run>/audit/<name>`: people's "valid" labels stand in for the
reasoning judge in the cascade's threshold search; the figures are computed by hand below.

The run is written by hand: a verify output with the first judge's recorded confidences, an audit
sample (as `infir audit` writes it) and labels.jsonl lines (as the labelling page writes them)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_infir
from pipeline.config import load_config
from pipeline.declaration import PIPELINE
from pipeline.errors import InfirError
from pipeline.runner.calibrate import calibrate_from_labels
from pipeline.runner.run import context
from pipeline.audit.verdicts import labelled_rows

RUN = "r"

# (stratum, population, rows: (the first judge's most confident failure or None, valid by people))
# accepted: 10 rows standing for 100 (weight 10), never failed by the first judge; 9 valid.
# rejected_judge: 5 for 20 (weight 4), failed at 0.6 (below the run's threshold); 2 valid.
# rejected_first_judge: 10 for 30 (weight 3), 5 failed at 0.9 (2 valid) and 5 at 0.97 (none valid).
STRATA = [
    ("accepted", 100, [(None, True)] * 9 + [(None, False)]),
    ("rejected_judge", 20, [(0.6, True)] * 2 + [(0.6, False)] * 3),
    ("rejected_first_judge", 30, [(0.9, True)] * 2 + [(0.9, False)] * 3 + [(0.97, False)] * 5),
]


def _cfg(**over):
    return load_config(None, {"run.name": RUN, "verify.cascade": True, **over})


def _first_model(cfg) -> str:
    stage = PIPELINE["verify"]
    return stage.first_judge(context(PIPELINE, stage, cfg))[1]


def write_run(root, first_model: str, strata=STRATA, *, cascade: bool = True, labels: int | None = None):
    """runs/r/verify (the first judge's verdicts per row), runs/r/audit/a/sample.json and labels.jsonl
    for the first `labels` sampled rows (all when None)."""
    run = root / "runs" / RUN
    (run / "verify").mkdir(parents=True)
    ids, rows, sample_rows, label_lines = [], [], [], []
    for stratum, population, members in strata:
        for k, (conf, valid) in enumerate(members):
            rid = f"{stratum}-{k}"
            verdicts = [{"check": "positive_fits", "passed": conf is None, "reason": "r",
                         "confidence": 1.0 if conf is None else conf},
                        {"check": "hn1_fits", "passed": True, "reason": "r", "confidence": 0.99}]
            rows.append({"id": rid, "first_judge_verdicts": verdicts if cascade else [],
                         "first_judge_confidence": "logprobs" if cascade else None,
                         "first_judge_model": first_model if cascade else None})
            sample_rows.append({"row_id": rid, "stratum": stratum, "weight": population / len(members),
                                "row": {}, "judge": {}})
            label_lines.append({"row_id": rid, "annotator": "ann", "answers": {"p_fits": "yes" if valid else "no"},
                                "valid": valid, "note": "", "at": "2026-12-07T15:00:00+00:00"})
            ids.append(rid)
    pq.write_table(pa.Table.from_pylist(rows), run / "verify" / "part-00000.parquet")
    (run / "verify" / "_SUCCESS.json").write_text(json.dumps({"stage": "verify", "shards": []}))
    audit = run / "audit" / "a"
    audit.mkdir(parents=True)
    strata_info = {s: {"population": p, "drawn": len(m), "weight": p / len(m)} for s, p, m in strata}
    (audit / "sample.json").write_text(json.dumps({"version": 1, "run": RUN, "seed": 13, "strata": strata_info,
                                                   "rows": sample_rows}))
    keep = label_lines if labels is None else label_lines[:labels]
    (audit / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
    return audit


def test_labels_set_the_threshold_with_hand_computed_figures(tmp_path):
    cfg = _cfg(**{"verify.calibration_max_false_reject": 0.2})
    audit = write_run(tmp_path, _first_model(cfg))
    cal, lines = calibrate_from_labels(PIPELINE, cfg, labelled_rows(audit))
    # 13 valid rows. Threshold 0.6 rejects 4 of them (30.8%), 0.9 rejects 2 (15.4% <= 20%): 0.9, the
    # lowest that qualifies, saves the most. 0.97 would reject none but save less.
    assert cal["recommended_threshold"] == pytest.approx(0.9)
    at = cal["at_recommended"]
    assert (at["false_reject"]["k"], at["false_reject"]["n"], at["false_reject"]["rate"]) == (2, 13, 0.1538)
    # False accepts: the 12 rows people call not valid that 0.9 lets through: 1 accepted + 3 rejected_judge.
    assert (at["false_accept"]["k"], at["false_accept"]["n"]) == (4, 12)
    # In the sample 10 of 25 rows are rejected (survival 0.6); reweighted (150 rows: 100 + 20 + 30),
    # 10 rows of weight 3 = 30 are rejected: survival 120/150 = 0.8, saving 0.2. Valid weight
    # 9*10 + 2*4 + 2*3 = 104, falsely rejected 2*3 = 6: 6/104.
    assert at["sample_survival"] == 0.6 and at["survival"] == 0.8 and at["saving"] == 0.2
    assert at["weighted_false_reject"] == round(6 / 104, 4)
    assert cal["against"] == "labels" and cal["labels"] == "a" and cal["rows"] == 25 and cal["annotators"] == 1
    assert cal["per_check"] == {} and cal["points"] == []
    # verify reads it as it reads a calibration against the reasoning judge.
    written = json.loads((tmp_path / "runs" / RUN / "calibration" / "judge.json").read_text())
    assert written["recommended_threshold"] == pytest.approx(0.9)
    assert any("against people's labels (audit a" in line for line in lines)


def test_cli_calibrate_judge_labels(tmp_path):
    cfg = _cfg()
    write_run(tmp_path, _first_model(cfg))
    code, out, err = run_infir("calibrate-judge", "--run", RUN, "--labels", f"runs/{RUN}/audit/a",
                               "--set", "verify.cascade=true", cwd=tmp_path)
    assert code == 0, err
    text = " ".join((out + err).split())
    # The default target (5%): only 0.97 rejects no valid row.
    assert "recommended threshold 0.97" in text and "against people's labels" in text, text
    code, out, err = run_infir("calibrate-judge", "--run", RUN, "--labels", f"runs/{RUN}/audit/a", "--rows", "5",
                               cwd=tmp_path)
    assert code == 2 and "drop --rows and --seed" in err and "Traceback" not in err


def test_refused_without_first_judge_confidences(tmp_path):
    cfg = _cfg()
    audit = write_run(tmp_path, _first_model(cfg), cascade=False)
    with pytest.raises(InfirError, match="none of its 25 labelled rows has a first-judge confidence"):
        calibrate_from_labels(PIPELINE, cfg, labelled_rows(audit))


def test_refused_with_too_few_labels(tmp_path):
    cfg = _cfg()
    audit = write_run(tmp_path, _first_model(cfg), labels=19)
    with pytest.raises(InfirError, match="19 labelled row.*at least 20 are needed"):
        calibrate_from_labels(PIPELINE, cfg, labelled_rows(audit))


def test_refused_for_another_first_model_or_another_run(tmp_path):
    cfg = _cfg()
    audit = write_run(tmp_path, "some-other-model")
    with pytest.raises(InfirError, match="first judged by some-other-model"):
        calibrate_from_labels(PIPELINE, cfg, labelled_rows(audit))
    with pytest.raises(InfirError, match="not an audit of run other"):
        calibrate_from_labels(PIPELINE, _cfg(**{"run.name": "other"}), labelled_rows(audit))
