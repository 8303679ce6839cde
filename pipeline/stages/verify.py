"""`infir verify`: cheap deterministic pre-filters, then the reasoning judge on every check.

A row is accepted only if every check passes. Rejected rows are kept with the checks they failed
(`verify/rejected/`), accepted ones go to `verify/accepted/`; `verify/part-*` holds all rows.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.generation.models import CHECKS, JudgeVerdicts
from pipeline.generation.prefilters import prefilter
from pipeline.progress import print_summary
from pipeline.stages import llm_common as lc
from pipeline.stages.common import StageResult, run_dir, skipped
from pipeline.stages.mine import SCHEMA as MINE_SCHEMA
from pipeline.stages.sharded import run_chunks
from pipeline.store import shard_name

VERDICT_TYPE = pa.struct([("check", pa.string()), ("passed", pa.bool_()), ("reason", pa.string())])
SCHEMA = pa.schema(
    list(MINE_SCHEMA)
    + [
        pa.field("verdicts", pa.list_(VERDICT_TYPE)),
        pa.field("failed_checks", pa.list_(pa.string())),
        pa.field("accepted", pa.bool_()),
        pa.field("judge_model", pa.string()),
        pa.field("prompt_judge", pa.string()),
        pa.field("verify_error", pa.string()),
        pa.field("usage_verify", lc.USAGE_TYPE),
    ]
)


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


def build_tasks(rows: list[dict], prompt, model: str, params: dict, v) -> tuple[list, dict]:
    """A judge request for every row the pre-filters let through, and each row's failed pre-filters."""
    pre = {r["id"]: ([] if (r["mine_error"] or not r["instruction_positive"]) else prefilter(r, v)) for r in rows}
    todo = [r for r in rows if not r["mine_error"] and r["instruction_positive"] and not pre[r["id"]]]
    return [lc.task(r["id"], prompt, judge_variables(r), JudgeVerdicts, model, params) for r in todo], pre


def verify_rows(rows: list[dict], client, prompt, model: str, params: dict, v, prepared=None) -> list[dict]:
    """Pre-filter, judge what is left in one batch of calls, decide every row (`prepared`: the
    chunk's `build_tasks`, done ahead by the runner)."""
    tasks, pre = prepared or build_tasks(rows, prompt, model, params, v)
    results = {res.key_id: res for res in client.run(tasks)}
    out_rows = []
    for r in rows:
        res = results.get(r["id"])
        verdicts, failed, error = [], [], None
        if r["mine_error"] or not r["instruction_positive"]:
            error = f"upstream: {r['mine_error'] or r['generate_error']}"
        elif pre[r["id"]]:
            failed = pre[r["id"]]
        elif res.ok:
            verdicts, failed = decide(res.value)
        else:
            error = f"judge: {res.error}"
        out_rows.append(
            {
                **r,
                "verdicts": verdicts,
                "failed_checks": failed,
                "accepted": error is None and not failed,
                "judge_model": model if res is not None else None,
                "prompt_judge": prompt.sha,
                "verify_error": error,
                "usage_verify": lc.usage_record(client, model, res),
            }
        )
    return out_rows


def run_verify(cfg, force: bool = False) -> StageResult:
    v = cfg.verify
    rd = run_dir(cfg)
    out, upstream, prompt, model = lc.open_stage(cfg, "verify", "mine", v, force)
    with out:
        done = out.start()
        if done:
            return skipped("verify", done)
        client = lc.make_client(cfg)
        params = lc.stage_params(cfg, "verify", model)

        def prepare(rows: list[dict]) -> tuple:
            return build_tasks(rows, prompt, model, params, v)

        batch = lc.prefetch_batch(cfg, "verify", client, rd / "mine", v.shard_rows, lambda rows: prepare(rows)[0])
        tally: Counter = Counter()
        index = {"k": 0}

        def process(rows: list[dict], prepared: tuple) -> list[dict]:
            return verify_rows(rows, client, prompt, model, params, v, prepared)

        def split(table: pa.Table) -> None:
            # accepted/ and rejected/ mirror each part shard, so resume keeps them in step.
            name = shard_name(index["k"])
            index["k"] += 1
            accepted = pc.fill_null(table.column("accepted"), False)
            errors = pc.is_valid(table.column("verify_error"))
            rejected = pc.and_(pc.invert(accepted), pc.invert(errors))
            out.write_shard(f"accepted/{name}", table.filter(accepted))
            out.write_shard(f"rejected/{name}", table.filter(rejected))
            tally["candidates"] += table.num_rows
            tally["accepted"] += pc.sum(accepted).as_py() or 0
            tally["rejected"] += pc.sum(rejected).as_py() or 0
            tally["failed"] += pc.sum(errors).as_py() or 0
            for row in table.select(["verdicts", "failed_checks"]).to_pylist():
                for f in row["failed_checks"]:
                    tally[f"failed:{f}"] += 1
                for vd in row["verdicts"]:
                    tally[f"judged:{vd['check']}"] += 1
                    tally[f"passed:{vd['check']}"] += vd["passed"]

        shards = run_chunks(out, rd / "mine", upstream["rows"], v.shard_rows, SCHEMA, process, "verify", client, split,
                            error_column="verify_error", prepare=prepare)
        summary = _summary(tally, shards, lc.llm_summary(client, batch))
        success = out.finish(summary)
    _print(summary)
    return StageResult("verify", False, success)


def _summary(t: Counter, shards: Counter, llm: dict) -> dict:
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
        "llm": llm,
    }


def _print(summary: dict) -> None:
    rows = [(k, summary[k]) for k in ("candidates", "accepted", "rejected", "failed", "acceptance_rate")]
    rows += [(k, summary[k]) for k in ("failed rows retried",) if summary.get(k)]
    rows += [(f"pass rate: {c}", f"{r:.1%}") for c, r in summary["pass_rate_per_check"].items()]
    rows += [(f"failed: {c}", n) for c, n in summary["failed_checks"].items()]
    rows += list(summary["llm"].items())
    print_summary("verify", rows)
