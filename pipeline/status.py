"""`infir status`: what each stage of a run has done, and what the LLM work cost."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from pipeline.errors import InfirError
from pipeline.progress import console

STAGES = ["source", "generate", "mine", "verify", "write", "train"]


LLM_STAGES = ("generate", "mine", "verify")


def _row_usage(d: Path, stage: str) -> dict:
    """Calls, tokens and cost as the rows record them: cache hits and resumed shards included."""
    from pipeline.stages.llm_common import sum_usage
    from pipeline.store import read_stage_table

    return sum_usage(read_stage_table(d), f"usage_{stage}")


def stage_states(run: Path) -> list[dict]:
    out = []
    for stage in STAGES:
        d = run / stage
        info = {"stage": stage, "state": "not started", "rows": None, "llm": {}, "summary": {}}
        if (d / "_SUCCESS.json").is_file():
            success = json.loads((d / "_SUCCESS.json").read_text())
            info.update(state="done", rows=success.get("rows"), summary=success.get("summary", {}))
            if stage in LLM_STAGES and success.get("rows"):
                usage = _row_usage(d, stage)
                last = info["summary"].get("llm", {})
                info["llm"] = {**usage, "http_calls": last.get("http_calls", 0), "cache_hits": last.get("cache_hits", 0)}
        elif (d / "_STATE.json").is_file():
            shards = len(list(d.glob("part-*.parquet")))
            info.update(state=f"interrupted ({shards} shard(s) kept)")
        out.append(info)
    return out


def print_status(run: Path) -> None:
    run = Path(run)
    if not run.is_dir():
        raise InfirError(f"{run}: no such run directory")
    states = stage_states(run)
    table = Table(title=f"run {run.name}", title_justify="left")
    for col in ("stage", "state", "rows", "LLM calls", "tokens", "cost USD", "last run: HTTP / cache"):
        table.add_column(col, justify="left" if col in ("stage", "state") else "right")
    totals = {"calls": 0, "tokens": 0, "cost_usd": 0.0}
    for s in states:
        llm = s["llm"]
        tokens = llm.get("prompt_tokens", 0) + llm.get("completion_tokens", 0)
        totals["calls"] += llm.get("calls", 0)
        totals["tokens"] += tokens
        totals["cost_usd"] += llm.get("cost_usd", 0.0)
        table.add_row(
            s["stage"],
            s["state"],
            "" if s["rows"] is None else f"{s['rows']:,}",
            f"{llm['calls']:,}" if llm else "",
            f"{tokens:,}" if llm else "",
            f"{llm['cost_usd']:.4f}" if llm else "",
            f"{llm['http_calls']:,} / {llm['cache_hits']:,}" if llm else "",
        )
    table.add_row("total", "", "", f"{totals['calls']:,}", f"{totals['tokens']:,}", f"{totals['cost_usd']:.4f}", "")
    console.print(table)
    verify = next(s for s in states if s["stage"] == "verify")
    summ = verify["summary"]
    if summ:
        accepted = summ.get("accepted", 0)
        console.print(
            f"accepted {accepted:,} of {summ.get('candidates', 0):,} candidates"
            + (f"; per accepted row: {totals['calls'] / accepted:.2f} calls, "
               f"{totals['tokens'] / accepted:,.0f} tokens, ${totals['cost_usd'] / accepted:.5f}" if accepted else "")
        )
        for check, rate in summ.get("pass_rate_per_check", {}).items():
            console.print(f"  {check}: {rate:.1%} pass ({summ.get('failed_checks', {}).get(check, 0):,} failed)")
