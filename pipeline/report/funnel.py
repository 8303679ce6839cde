"""The funnel: source rows -> generated -> mined -> each filter -> each judge check -> accepted.

Failures (retries exhausted, invalid answers: a row's `<stage>_error`) are counted apart from
rejections (a filter or a judge check said no), as they are different problems: a failure is
paid-for work to retry, a rejection is the corpus's quality bar doing its job.
"""

from __future__ import annotations

from collections import Counter

from pipeline.report.load import ERROR_COLUMNS, RunData

PREFILTER_PREFIX = "prefilter_"


def judge_checks() -> tuple[str, ...]:
    from pipeline.generation.models import CHECKS

    return tuple(CHECKS)


def row_reasons(run: RunData) -> list[dict]:
    """Per row: status (accepted | rejected | failed | pending), the stage that failed it, the failed
    filters and the failed judge checks. Filters come from `failed_filters` where the filter stage
    wrote it, else from verify's `prefilter_*` names in `failed_checks`."""
    n = run.table.num_rows if run.table is not None else 0
    errors = {c: run.column(c) for c in ERROR_COLUMNS}
    failed_checks = run.column("failed_checks") or [None] * n
    failed_filters = run.column("failed_filters")
    accepted = run.column("accepted")
    out = []
    for i in range(n):
        err_col = next((c for c in ERROR_COLUMNS if errors[c] is not None and errors[c][i]), None)
        fc = list(failed_checks[i] or [])
        filters = list(failed_filters[i] or []) if failed_filters is not None else [c for c in fc if c.startswith(PREFILTER_PREFIX)]
        checks = [c for c in fc if c not in filters]
        if err_col is not None:
            status = "failed"
        elif accepted is not None:
            status = "accepted" if accepted[i] else "rejected"
        elif filters:
            status = "rejected"
        else:
            status = "pending"
        out.append({
            "status": status,
            "failed_stage": err_col.removesuffix("_error") if err_col else None,
            "error": errors[err_col][i] if err_col else None,
            "filters": filters,
            "checks": checks,
        })
    return out


def _step(name: str, count: int, base: int, prev: int | None) -> dict:
    return {
        "step": name,
        "rows": count,
        "pct_of_source": round(100 * count / base, 2) if base else None,
        "pct_of_previous": round(100 * count / prev, 2) if prev else None,
    }


def funnel(run: RunData, reasons: list[dict]) -> dict:
    source_rows = int(run.success.get("source", {}).get("rows") or len(reasons))
    failed_at = Counter(r["failed_stage"] for r in reasons if r["status"] == "failed")
    steps = [_step("source rows", source_rows, source_rows, None)]
    alive = len(reasons)
    if alive != source_rows and run.row_stage:
        steps.append(_step(f"candidates read by {run.row_stage}", alive, source_rows, source_rows))
    filter_fail = Counter(f for r in reasons if r["status"] != "failed" for f in r["filters"])
    check_fail = Counter(c for r in reasons if r["status"] != "failed" for c in r["checks"])
    for stage, label in (("generate", "generated (I+)"), ("mine", "mined (negatives, I-, Q-, HN1, HN2)")):
        if stage in run.success:
            alive -= failed_at.get(stage, 0)
            steps.append(_step(label, alive, source_rows, steps[-1]["rows"]))
    if "filter" in run.success or filter_fail:
        alive -= failed_at.get("filter", 0)
        alive -= sum(1 for r in reasons if r["status"] != "failed" and r["filters"])
        where = "filter stage" if "filter" in run.success else "verify's pre-filters"
        steps.append(_step(f"passed filters ({where})", alive, source_rows, steps[-1]["rows"]))
    if "verify" in run.success:
        judged = alive - failed_at.get("verify", 0)
        steps.append(_step("judged (no judge failure)", judged, source_rows, steps[-1]["rows"]))
        accepted = sum(1 for r in reasons if r["status"] == "accepted")
        steps.append(_step("accepted", accepted, source_rows, judged))
    judged_rows = sum(1 for r in reasons if r["status"] in ("accepted", "rejected") and not r["filters"])
    checks = [
        {"check": c, "failed": check_fail.get(c, 0), "judged": judged_rows,
         "pass_rate": round(1 - check_fail.get(c, 0) / judged_rows, 4) if judged_rows else None}
        for c in judge_checks() if "verify" in run.success
    ]
    checks += [{"check": c, "failed": n, "judged": judged_rows, "pass_rate": None}
               for c, n in sorted(check_fail.items()) if c not in judge_checks()]
    status = Counter(r["status"] for r in reasons)
    errors = Counter((r["failed_stage"], (r["error"] or "").split(":", 1)[0][:60]) for r in reasons if r["status"] == "failed")
    return {
        "steps": steps,
        "filters": [{"filter": f, "rejected": n, "pct_of_candidates": round(100 * n / len(reasons), 2) if reasons else None}
                    for f, n in filter_fail.most_common()],
        "checks": sorted(checks, key=lambda c: -c["failed"]),
        "status": {k: status.get(k, 0) for k in ("accepted", "rejected", "failed", "pending")},
        "failures": [{"stage": s, "kind": k, "rows": n} for (s, k), n in errors.most_common()],
        "rejected_by_filters": sum(1 for r in reasons if r["status"] == "rejected" and r["filters"]),
        "rejected_by_judge": sum(1 for r in reasons if r["status"] == "rejected" and not r["filters"]),
    }
