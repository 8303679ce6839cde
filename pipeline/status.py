"""`infir status`: what each stage of a run has done, and what the LLM work cost."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from pipeline.errors import InfirError
from pipeline.progress import console



def _row_usage(d: Path, column: str) -> tuple[dict, dict[str, dict]]:
    """Calls, tokens and cost as the rows record them: cache hits and resumed shards included. A
    stage with more than one kind of request (`usage_verify` and the judge cascade's
    `usage_verify_first`) gets their sum and each apart."""
    from pipeline.runner.llm import sum_usage
    from pipeline.store import read_stage_table

    table = read_stage_table(d)
    cols = [c for c in table.column_names if c == column or c.startswith(column + "_")]
    parts = {c: sum_usage(table, c) for c in cols}
    total = sum_usage(table, column)
    for c, u in parts.items():
        if c != column:
            for k in total:
                total[k] += u[k]
    return total, {c: u for c, u in parts.items() if len(parts) > 1 and u["calls"]}


def stage_states(run: Path, pipe=None) -> list[dict]:
    from pipeline.declaration import PIPELINE
    from pipeline.runner.shape import LLMStage

    out = []
    for st in (pipe or PIPELINE):
        stage = st.name
        d = run / stage
        info = {"stage": stage, "state": "not started", "rows": None, "llm": {}, "llm_parts": {}, "summary": {},
                "notes": st.status_lines(run) if hasattr(st, "status_lines") else []}
        if (d / "_SUCCESS.json").is_file():
            success = json.loads((d / "_SUCCESS.json").read_text())
            info.update(state="done", rows=success.get("rows"), summary=success.get("summary", {}))
            if isinstance(st, LLMStage) and success.get("rows"):
                usage, parts = _row_usage(d, st.usage_column)
                last = info["summary"].get("llm", {})
                info["llm"] = {**usage, "http_calls": last.get("http_calls", 0), "cache_hits": last.get("cache_hits", 0)}
                info["llm_parts"] = parts
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
    for col in ("stage", "state", "rows", "LLM calls", "tokens", "of which cached in", "of which reasoning",
                "cost USD", "last run: HTTP / cache"):
        table.add_column(col, justify="left" if col in ("stage", "state") else "right")
    totals = {"calls": 0, "tokens": 0, "cost_usd": 0.0, "cached_tokens": 0, "reasoning_tokens": 0}

    def usage_cells(u: dict) -> list[str]:
        tokens = u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
        return [f"{u['calls']:,}", f"{tokens:,}", f"{u.get('cached_tokens', 0):,}",
                f"{u.get('reasoning_tokens', 0):,}", f"{u['cost_usd']:.4f}"] if u else [""] * 5

    for s in states:
        llm = s["llm"]
        totals["calls"] += llm.get("calls", 0)
        totals["tokens"] += llm.get("prompt_tokens", 0) + llm.get("completion_tokens", 0)
        totals["cost_usd"] += llm.get("cost_usd", 0.0)
        totals["cached_tokens"] += llm.get("cached_tokens", 0)
        totals["reasoning_tokens"] += llm.get("reasoning_tokens", 0)
        table.add_row(
            s["stage"],
            s["state"],
            "" if s["rows"] is None else f"{s['rows']:,}",
            *usage_cells(llm),
            f"{llm['http_calls']:,} / {llm['cache_hits']:,}" if llm else "",
        )
        for column, u in s["llm_parts"].items():  # e.g. the judge cascade's two judges
            table.add_row(f"  {column.removeprefix('usage_')}", "", "", *usage_cells(u), "", style="dim")
    table.add_row("total", "", "", f"{totals['calls']:,}", f"{totals['tokens']:,}", f"{totals['cached_tokens']:,}",
                  f"{totals['reasoning_tokens']:,}", f"{totals['cost_usd']:.4f}", "")
    console.print(table)
    for s in states:  # stages that reject rows by name before the judge (filters)
        by_name = (s["summary"] or {}).get("failed_filters") or {}
        if by_name:
            console.print(f"{s['stage']}: {s['summary'].get('rejected', 0):,} rejected before the judge")
            for name, n in by_name.items():
                console.print(f"  {name}: {n:,}")
    # The judging stage: the one whose summary counts accepted rows.
    summ = next((s["summary"] for s in states if "accepted" in (s["summary"] or {})), {})
    if summ:
        accepted = summ.get("accepted", 0)
        console.print(
            f"accepted {accepted:,} of {summ.get('candidates', 0):,} candidates"
            + (f"; per accepted row: {totals['calls'] / accepted:.2f} calls, "
               f"{totals['tokens'] / accepted:,.0f} tokens, ${totals['cost_usd'] / accepted:.5f}" if accepted else "")
        )
        for check, rate in summ.get("pass_rate_per_check", {}).items():
            console.print(f"  {check}: {rate:.1%} pass")
        casc = summ.get("cascade")
        if casc:
            console.print(
                f"judge cascade ({casc['first_model']}, threshold {casc['threshold']:g}): "
                f"{casc['rejected_by_first_judge']:,} of {casc['first_judged']:,} rejected by the first judge, "
                f"{casc['sent_to_judge']:,} sent to the judge"
            )
    for s in states:
        for line in s["notes"]:
            console.print(line)
