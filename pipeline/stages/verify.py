"""`infir verify`: the reasoning judge on every check of every candidate the filters let through.

A row is accepted only if every check passes. Rejected rows are kept with the checks they failed
(`verify/rejected/`), accepted ones go to `verify/accepted/`; `verify/part-*` holds all rows.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.columns import REJECTIONS
from pipeline.generation.models import CHECKS, JudgeVerdicts
from pipeline.runner import llm
from pipeline.runner.shape import Context, LLMStage
from pipeline.store import shard_name


def decide(verdicts: JudgeVerdicts) -> tuple[list[dict], list[str]]:
    """Per-check records and the failed checks: a row is accepted only if every check holds."""
    records = []
    for check in CHECKS:
        v = getattr(verdicts, check)
        records.append({"check": check, "passed": bool(v.passed), "reason": v.reason})
    return records, [r["check"] for r in records if not r["passed"]]


def judge_variables(row: dict) -> dict:
    return {
        "query": row["query_positive"],
        "instruction": row["instruction_positive"],
        "instruction_negative": row["instruction_negative"],
        "query_negative": row["query_negative"],
        "passage": row["document_positive"],
        "hard_negative_1": row["hard_negative_document_1"],
        "hard_negative_2": row["hard_negative_document_2"],
    }


def upstream_error(row: dict) -> str | None:
    """The error the nearest upstream stage recorded for the row (columns ending in `_error`; a
    stage records its upstream's failure in its own, so the last one set says the most)."""
    return next((v for k, v in reversed(row.items()) if k.endswith("_error") and k != "verify_error" and v), None)


class Verify(LLMStage):
    name = "verify"
    section = "verify"
    adds = ("verdicts", "failed_checks", "accepted", "judge_model", "prompt_judge", "verify_error", "usage_verify")
    make_help = "stage 4: the judge"
    doc = """Judge every candidate the filters let through on every check (prompts/judge.md; default o3-mini).

    Input: the upstream stage's rows. Output: runs/<run>/verify/ (all rows with verdicts and
    reasons), verify/accepted/ and verify/rejected/ (with the failed checks). One LLM call per
    judged row.
    """

    def params(self, cfg, model: str) -> dict:
        s = self.settings(cfg)
        return llm.params_for(model, max_tokens=s.max_completion_tokens, reasoning_effort=s.reasoning_effort)

    def tasks(self, ctx: Context, rows: list[dict]) -> tuple[list, dict]:
        """A judge request for every row no upstream stage rejected, and each row's upstream rejections
        (the deterministic filters it failed: it is rejected with their names, never sent)."""
        pre = {r["id"]: ([] if upstream_error(r) else list(r.get(REJECTIONS) or [])) for r in rows}
        todo = [r for r in rows if not upstream_error(r) and not pre[r["id"]]]
        return [llm.task(r["id"], ctx.prompt, judge_variables(r), JudgeVerdicts, ctx.model, ctx.params) for r in todo], pre

    def to_row(self, ctx: Context, r: dict, res, pre: dict) -> dict:
        verdicts, failed, error = [], [], None
        up = upstream_error(r)
        if up:
            error = f"upstream: {up}"
        elif pre[r["id"]]:
            failed = pre[r["id"]]
        elif res.ok:
            verdicts, failed = decide(res.value)
        else:
            error = f"judge: {res.error}"
        return {
            "verdicts": verdicts,
            "failed_checks": failed,
            "accepted": error is None and not failed,
            "judge_model": ctx.model if res is not None else None,
            "prompt_judge": ctx.prompt.sha,
            "verify_error": error,
            "usage_verify": llm.usage_record(ctx.client, ctx.model, res),
        }

    def on_shard(self, ctx: Context, index: int, table: pa.Table) -> None:
        # accepted/ and rejected/ mirror each part shard, so resume keeps them in step.
        name = shard_name(index)
        accepted = pc.fill_null(table.column("accepted"), False)
        errors = pc.is_valid(table.column("verify_error"))
        rejected = pc.and_(pc.invert(accepted), pc.invert(errors))
        ctx.out.write_shard(f"accepted/{name}", table.filter(accepted))
        ctx.out.write_shard(f"rejected/{name}", table.filter(rejected))

    def tally(self, ctx: Context, t: Counter, table: pa.Table) -> None:
        accepted = pc.fill_null(table.column("accepted"), False)
        errors = pc.is_valid(table.column("verify_error"))
        rejected = pc.and_(pc.invert(accepted), pc.invert(errors))
        t["candidates"] += table.num_rows
        t["accepted"] += pc.sum(accepted).as_py() or 0
        t["rejected"] += pc.sum(rejected).as_py() or 0
        t["failed"] += pc.sum(errors).as_py() or 0
        for row in table.select(["verdicts", "failed_checks"]).to_pylist():
            for f in row["failed_checks"]:
                t[f"failed:{f}"] += 1
            for vd in row["verdicts"]:
                t[f"judged:{vd['check']}"] += 1
                t[f"passed:{vd['check']}"] += vd["passed"]

    def summary(self, ctx: Context, t: Counter, shards: Counter) -> dict:
        judged = {c: t[f"judged:{c}"] for c in CHECKS}
        failed_by = {k.split(":", 1)[1]: n for k, n in sorted(t.items()) if k.startswith("failed:")}
        return {
            "rows": t["candidates"],
            "candidates": t["candidates"],
            "accepted": t["accepted"],
            "rejected": t["rejected"],
            "failed": t["failed"],
            "acceptance_rate": round(t["accepted"] / t["candidates"], 4) if t["candidates"] else 0.0,
            "pass_rate_per_check": {c: round(t[f"passed:{c}"] / n, 4) for c, n in judged.items() if n},
            "failed_checks": failed_by,
            **shards,
        }

    def summary_rows(self, summary: dict) -> list[tuple[str, object]]:
        rows = [(k, summary[k]) for k in ("candidates", "accepted", "rejected", "failed", "acceptance_rate")]
        rows += [(k, summary[k]) for k in ("failed rows retried",) if summary.get(k)]
        rows += [(f"pass rate: {c}", f"{r:.1%}") for c, r in summary["pass_rate_per_check"].items()]
        rows += [(f"failed: {c}", n) for c, n in summary["failed_checks"].items()]
        return rows


STAGE = Verify()
