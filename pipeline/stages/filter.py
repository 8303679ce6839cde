"""`infir filter`: every deterministic check, before any judge money is spent.

Rows that fail a filter keep the failed filters' names (`failed_filters`); the judging stage after
it does not send them (they are rejected with those names) and `status` counts each filter. Rows
that failed upstream pass through untouched: they are the judge stage's failures to report.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipeline.generation.filters import run_filters
from pipeline.runner.shape import Context, RowStage


def _failed_upstream(row: dict) -> bool:
    return any(v for k, v in row.items() if k.endswith("_error"))


class Filter(RowStage):
    name = "filter"
    section = "filter"
    adds = ("failed_filters",)
    make_help = "stage 4: deterministic filters, before the judge is paid"
    doc = """Run every deterministic filter (minimal edits, lengths, near-duplicates, answer leaks, text
    sanity) on each candidate; no LLM, no cost.

    Input: the upstream stage's rows. Output: runs/<run>/filter/ with failed_filters (the names of the
    filters a row fails; empty: it goes to the judge). Settings: the [filter] section.
    """

    def process(self, ctx: Context, rows: list[dict], prepared) -> list[dict]:
        s = ctx.settings
        return [{**r, "failed_filters": [] if _failed_upstream(r) else run_filters(r, s)} for r in rows]

    def tally(self, ctx: Context, counts: Counter, table: pa.Table) -> None:
        errors = [table.column(c).to_pylist() for c in table.column_names if c.endswith("_error")]
        for i, names in enumerate(table.column("failed_filters").to_pylist()):
            counts["rows"] += 1
            if any(col[i] for col in errors):
                counts["failed upstream"] += 1
            elif names:
                counts["rejected"] += 1
                for n in names:
                    counts[f"filter:{n}"] += 1
            else:
                counts["passed"] += 1

    def summary(self, ctx: Context, counts: Counter, shards: Counter) -> dict:
        by_filter = {k.split(":", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("filter:")}
        return {"rows": counts["rows"], "passed": counts["passed"], "rejected": counts["rejected"],
                "failed upstream": counts["failed upstream"], "failed_filters": by_filter, **shards}

    def summary_rows(self, summary: dict) -> list[tuple[str, object]]:
        rows = [(k, v) for k, v in summary.items() if not isinstance(v, dict)]
        return rows + [(f"failed: {k}", n) for k, n in summary["failed_filters"].items()]


STAGE = Filter()
