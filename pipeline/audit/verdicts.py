"""People's verdict on each labelled row of an audit, as `calibrate-judge --labels` uses it in place
of the reasoning judge's (pipeline/runner/calibrate.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.audit.labels import read_labels
from pipeline.audit.sample import load_sample
from pipeline.audit.score import _valid


@dataclass
class LabelledRows:
    path: Path  # the audit folder, runs/<run>/audit/<name>
    name: str
    valid: dict[str, bool]  # row id -> people's verdict (the majority, a tie not valid, as `audit score`)
    stratum: dict[str, str]  # row id -> its stratum in the sample
    population: dict[str, int]  # stratum -> rows of the run in it (the sampling weights' numerator)
    annotators: list[str]
    notes: list[str]


def labelled_rows(audit_dir: Path) -> LabelledRows:
    audit_dir = Path(audit_dir)
    sample = load_sample(audit_dir)
    stratum = {r["row_id"]: r["stratum"] for r in sample["rows"]}
    latest, notes = read_labels(audit_dir, set(stratum))
    by_row: dict[str, dict] = defaultdict(dict)
    for (rid, annotator), label in latest.items():
        by_row[rid][annotator] = label
    population = {s: int((v or {}).get("population") or 0) for s, v in (sample.get("strata") or {}).items()}
    return LabelledRows(
        path=audit_dir,
        name=audit_dir.name,
        valid={rid: _valid(labels) for rid, labels in by_row.items()},
        stratum={rid: stratum[rid] for rid in by_row},
        population=population,
        annotators=sorted({a for labels in by_row.values() for a in labels}),
        notes=notes,
    )
