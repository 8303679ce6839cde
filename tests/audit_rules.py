"""Labels for an audit's sample made by the offline rules, standing in for a person (the README's
"Check the judge" figures, and the report and card tests).

    .venv/bin/python tests/audit_rules.py runs/sample --rows 100 --seed 13 --name offline-rules
    infir audit score runs/sample/audit/offline-rules

Draws the sample as `infir audit runs/sample --rows 100 --seed 13 --name offline-rules` would (or
reuses it), then answers each row's four questions with the offline backend's lexical rules
(pipeline/generation/offline.py `judge`): a question is "yes" when every judge check it stands for
holds under the rules, and a row is valid when all four are. These are the offline judge's own
rules, so on the rows it judged they agree with it by construction (precision 100%, no false
rejects); what they measure is everything else: the rows a filter rejected, which no judge saw.
Written as `labels-offline-rules.jsonl` (one file per annotator, a layout `audit score` reads).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.audit.questions import QUESTIONS  # noqa: E402
from pipeline.audit.sample import ROW_FIELDS, load_sample  # noqa: E402
from pipeline.generation.offline import judge  # noqa: E402

ANNOTATOR = "offline-rules"
AT = "2026-01-01T00:00:00+00:00"  # a fixed time: the same sample gives the same file


def rule_label(row: dict) -> dict:
    """One sample row's label line under the offline rules."""
    full = {col: row["row"].get(short) or "" for col, short in ROW_FIELDS.items()}
    verdicts = judge({
        "query": full["query_positive"], "instruction": full["instruction_positive"],
        "instruction_negative": full["instruction_negative"], "query_negative": full["query_negative"],
        "passage": full["document_positive"], "hard_negative_1": full["hard_negative_document_1"],
        "hard_negative_2": full["hard_negative_document_2"],
    })
    answers = {q: "yes" if all(verdicts[c]["passed"] for c in checks) else "no" for q, (_, checks) in QUESTIONS.items()}
    return {"row_id": row["row_id"], "annotator": ANNOTATOR, "answers": answers,
            "valid": all(a == "yes" for a in answers.values()), "note": "offline rules", "at": AT}


def write_rule_labels(audit_dir: Path) -> Path:
    """labels-offline-rules.jsonl for every row of the audit's sample."""
    sample = load_sample(audit_dir)
    path = Path(audit_dir) / f"labels-{ANNOTATOR}.jsonl"
    path.write_text("".join(json.dumps(rule_label(r), sort_keys=True) + "\n" for r in sample["rows"]), encoding="utf-8")
    return path


def main() -> None:
    from pipeline.audit.command import prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--name", default=ANNOTATOR)
    a = ap.parse_args()
    audit = prepare(a.run, rows=a.rows, seed=a.seed, name=a.name, per_stratum=None)
    print(f"wrote {write_rule_labels(audit)}")


if __name__ == "__main__":
    main()
