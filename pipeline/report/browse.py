"""The rows the page's browser holds: every row of a small run, a seeded sample of a large one.

The sample keeps each status's share of the run, but gives rejected and failed rows at least a
quarter of the budget each (when they exist), since those are the rows a reviewer came to read.
Each row carries its I+/I- and Q+/Q- word differences, so the page only has to paint them.
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from pipeline.report.cost import row_cost
from pipeline.report.load import FIELDS, USAGE_STAGES, RunData

_SPLIT = re.compile(r"(\s+)")


def sample_positions(statuses: list[str], budget: int, seed: int) -> list[int]:
    """Seeded row positions, at most `budget`, stratified by status (see the module doc)."""
    n = len(statuses)
    if n <= budget:
        return list(range(n))
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(statuses):
        by.setdefault(s, []).append(i)
    quota = {s: max(round(budget * len(ix) / n), min(len(ix), budget // 4) if s in ("rejected", "failed") else 0)
             for s, ix in by.items()}
    over = sum(quota.values()) - budget
    for s in sorted(quota, key=lambda s: -quota[s]):  # trim the largest stratum if rounding overshot
        if over <= 0:
            break
        cut = min(over, quota[s] - 1)
        quota[s] -= cut
        over -= cut
    picked = [int(i) for s, ix in sorted(by.items())
              for i in rng.choice(ix, size=min(quota[s], len(ix)), replace=False)]
    return sorted(picked)


def word_diff(a: str, b: str) -> tuple[list, list]:
    """Segments [text, changed] of `a` and of `b`: the words one has and the other lacks are marked."""
    ta, tb = _SPLIT.split(a or ""), _SPLIT.split(b or "")
    # Whitespace is kept as tokens so the texts paint back exactly; compare words case-blind.
    sm = difflib.SequenceMatcher(None, [t.lower() for t in ta], [t.lower() for t in tb], autojunk=False)
    sa, sb = [], []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        changed = op != "equal"
        if i2 > i1:
            sa.append(["".join(ta[i1:i2]), changed])
        if j2 > j1:
            sb.append(["".join(tb[j1:j2]), changed])
    return sa, sb


def browser_rows(run: RunData, reasons: list[dict], positions: list[int], hard: dict | None = None) -> list[dict]:
    cols = {c: run.column(c) for c in ("id", "query_id", "passage_id", "instruction_kind", "verdicts", *FIELDS)}
    usage = {s: run.column(f"usage_{s}") for s in USAGE_STAGES}
    hard_of = dict(zip(hard["positions"], range(len(hard["positions"])))) if hard else {}
    out = []
    for i in positions:
        f = {k: (cols[k][i] if cols[k] is not None else None) for k in FIELDS}
        ip, ineg = word_diff(f["instruction_positive"] or "", f["instruction_negative"] or "")
        qp, qneg = word_diff(f["query_positive"] or "", f["query_negative"] or "")
        r = reasons[i]
        row = {
            "id": cols["id"][i] if cols["id"] else str(i),
            "query_id": cols["query_id"][i] if cols["query_id"] else None,
            "kind": cols["instruction_kind"][i] if cols["instruction_kind"] else None,
            "status": r["status"],
            "failed_stage": r["failed_stage"],
            "error": r["error"],
            "filters": r["filters"],
            "checks": r["checks"],
            "fields": f,
            "diff": {"instruction_positive": ip, "instruction_negative": ineg, "query_positive": qp, "query_negative": qneg},
            "verdicts": [{"check": v["check"], "passed": v["passed"], "reason": v["reason"]}
                         for v in (cols["verdicts"][i] or [])] if cols["verdicts"] else [],
            "cost": row_cost({s: (u[i] if u is not None else None) for s, u in usage.items()}),
        }
        if i in hard_of:
            k = hard_of[i]
            row["cosine"] = {n: hard["per_row"][f"cos_{n}"][k] for n in ("positive", "hn1", "hn2")}
        out.append(row)
    return out
