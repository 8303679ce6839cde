"""A run directory as verify writes it, small and known: rows in each audit stratum, plus failed
rows (which no stratum takes), over two part shards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.generation.models import CHECKS

#: stratum -> rows of it in the fixture run (and 3 failed rows besides).
COUNTS = {"accepted": 24, "rejected_judge": 10, "rejected_first_judge": 6, "rejected_filter": 8}
FAILED = 3


def _row(k: int, stratum: str | None) -> dict:
    failed_check = CHECKS[k % len(CHECKS)]
    verdicts = [{"check": c, "passed": not (stratum in ("rejected_judge", "rejected_first_judge") and c == failed_check),
                 "reason": f"{c} for row {k}"} for c in CHECKS]
    decided = {"accepted": "judge", "rejected_judge": "judge", "rejected_first_judge": "first_judge",
               "rejected_filter": "filter", None: None}[stratum]
    filters = ["query_negative_not_minimal"] if stratum == "rejected_filter" else []
    return {
        "id": f"row{k:03d}", "query_id": f"q{k}", "passage_id": f"p{k}", "instruction_kind": "aspect",
        "query_positive": f"what is topic {k}", "instruction_positive": f"Find passages about topic {k} written for experts",
        "document_positive": f"Passage {k} explains topic {k} in depth for experts.",
        "instruction_negative": f"Find passages about topic {k} written for children",
        "hard_negative_document_1": f"Passage on topic {k} for children.",
        "query_negative": f"what is subject {k}", "hard_negative_document_2": f"Passage {k} on subject {k} for experts.",
        "accepted": stratum == "accepted", "decided_by": decided,
        "verify_error": "judge: timed out" if stratum is None else None,
        "failed_filters": filters,
        "failed_checks": filters + ([failed_check] if stratum in ("rejected_judge", "rejected_first_judge") else []),
        "verdicts": [] if stratum in ("rejected_filter", None) else verdicts,
        "judge_model": None if stratum in ("rejected_filter", None) else "judge-model",
    }


def make_audit_run(root: Path, name: str = "fixture") -> Path:
    run = Path(root) / "runs" / name
    strata = [s for s, n in COUNTS.items() for _ in range(n)] + [None] * FAILED
    # interleave the strata as a run would
    order = sorted(range(len(strata)), key=lambda i: (i * 7919) % len(strata))
    rows = [_row(k, strata[i]) for k, i in enumerate(order)]
    for stage in ("source", "generate", "mine", "filter", "verify"):
        (run / stage).mkdir(parents=True)
        (run / stage / "_SUCCESS.json").write_text(json.dumps({"stage": stage, "shards": [], "summary": {}}))
    half = len(rows) // 2
    for j, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), run / "verify" / f"part-{j:05d}.parquet")
    return run


def stratum_of_fixture_row(row_id: str, sample: dict) -> str:
    return next(r["stratum"] for r in sample["rows"] if r["row_id"] == row_id)
