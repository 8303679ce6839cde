"""`infir status`: what each stage of a run has done, row by row, and what it cost.

Per stage: its state (done, done with failed rows a rerun retries, damaged when shards it wrote
were deleted since (a rerun redoes them), running with the pid holding its lock, interrupted with
the shards it kept, not started), rows in and out, rows failed in this stage (what a rerun retries:
the shards' `failed` counts), failed upstream (passed along, not sent) and rejected (by the filters
or the judge): for a row stage in = out + failed + failed upstream + rejected. LLM calls, tokens and
cost as the rows record them. Then the run's spend against its budget (the spend ledger), each
filter's count, the acceptance per judge check, and whether the release on disk is the one the
current candidates would produce.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from pipeline.errors import InfirError
from pipeline.progress import console as _stderr
from pipeline.store import read_success
from pipeline.store.lock import held_by
from pipeline.store.shards import failed_rows, missing_shards, stage_fingerprint


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
    sent = {c: u for c, u in parts.items() if u["calls"]}
    return total, sent if len(sent) > 1 else {}


def _state(d: Path, success: dict | None) -> str:
    holder = held_by(d)
    if holder is not None:
        return f"running ({holder})"
    if success is not None:
        missing = missing_shards(d, success)
        if missing:  # deleted after the stage finished: its output is not what its marker says
            return f"damaged: {len(missing):,} shard(s) missing; rerun to redo it"
        failed = failed_rows(success)
        return f"done, {failed:,} failed (rerun retries them)" if failed else "done"
    if (d / "_STATE.json").is_file():
        return f"interrupted ({len(list(d.glob('part-*.parquet')))} shard(s) kept)"
    return "not started"


def _counts(success: dict, rows_in: int | None, failed_before: int | None) -> dict:
    """Rows in / out / failed / failed upstream / rejected of a finished stage. Failed: in this
    stage, from its shards' records (a summary's `failed` may count the rows that failed upstream
    too: the judge's does); failed upstream: the rows earlier stages failed (`failed_before`, None
    for a stage that does not map rows), which every row stage passes along unsent."""
    summary = success.get("summary") or {}
    failed = failed_rows(success) if "failed" in summary else None
    rejected = summary.get("rejected")
    out = summary.get("accepted", summary.get("passed"))
    if out is None:
        rows = summary.get("rows", success.get("rows"))
        out = rows - (failed or 0) - (failed_before or 0) - (rejected or 0) if failed_before is not None else rows
    return {"in": rows_in, "out": out, "failed": failed, "failed_upstream": failed_before, "rejected": rejected}


def stage_states(run: Path, pipe=None) -> list[dict]:
    from pipeline.declaration import PIPELINE
    from pipeline.runner.shape import LLMStage, RowStage

    out, rows_in, failed_before = [], None, 0
    for st in (pipe or PIPELINE):
        d = run / st.name
        success = read_success(d)
        info = {"stage": st.name, "state": _state(d, success), "rows": None, "llm": {}, "llm_parts": {}, "summary": {},
                "counts": {"in": rows_in, "out": None, "failed": None, "failed_upstream": None, "rejected": None},
                "notes": st.status_lines(run) if hasattr(st, "status_lines") else []}
        if success is not None:
            summary = success.get("summary") or {}
            row_stage = isinstance(st, RowStage)
            counts = _counts(success, rows_in, failed_before if row_stage else None)
            info.update(rows=success.get("rows"), summary=summary, counts=counts)
            failed_before += counts["failed"] or 0
            # A damaged stage's usage is not read: what its rows record is partly gone.
            if isinstance(st, LLMStage) and success.get("rows") and not missing_shards(d, success):
                usage, parts = _row_usage(d, st.usage_column)
                last = summary.get("llm", {})
                info["llm"] = {**usage, "http_calls": last.get("http_calls", 0), "cache_hits": last.get("cache_hits", 0)}
                info["llm_parts"] = parts
            rows_in = success.get("rows")
        out.append(info)
    return out


def _cell(v, fmt="{:,}") -> str:
    return "" if v is None else fmt.format(v)


def _spend(run: Path) -> str | None:
    from pipeline.runner.llm import SPEND_LEDGER

    path = run / SPEND_LEDGER
    if not path.is_file():
        return None
    from pipeline.llm.budget import SpendLedger

    ledger = SpendLedger(path)
    try:
        spent, by_label = ledger.spent(), ledger.by_label()
    finally:
        ledger.close()
    cap = None
    cfg = run / "config.toml"
    if cfg.is_file():
        import tomllib

        try:
            cap = tomllib.loads(cfg.read_text()).get("llm", {}).get("max_cost_usd")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            cap = None
    parts = ", ".join(f"{k} ${v:.4f}" for k, v in by_label.items())
    budget = f" of ${cap:.2f} budget ({100 * spent / cap:.0f}%)" if cap else " (no budget set: llm.max_cost_usd)"
    return f"spent ${spent:.4f}{budget}" + (f": {parts}" if parts else "")


def _release_note(run: Path, states: list[dict]) -> str | None:
    """Whether the release on disk was written from the candidates the run holds now."""
    names = [s["stage"] for s in states]
    if "write" not in names:
        return None
    i = names.index("write")
    write = read_success(run / "write")
    if write is None or i == 0:
        return None
    upstream = read_success(run / names[i - 1])
    release = (write.get("summary") or {}).get("release")
    if upstream is None:
        return f"release {release}: its candidates' stage has not finished since"
    if stage_fingerprint(upstream) != write.get("input_fingerprint"):
        return f"release {release} is stale: the candidates changed since it was written; rerun `infir write` (--bump)"
    return f"release {release} holds the current candidates"


def print_status(run: Path) -> None:
    # The status is the command's result: stdout, wide enough to stay whole in a log or a pipe.
    from rich.console import Console

    console = Console(highlight=False, width=None if _stderr.is_terminal else 180)
    run = Path(run)
    if not run.is_dir():
        raise InfirError(f"{run}: no such run directory")
    states = stage_states(run)
    table = Table(title=f"run {run.name}", title_justify="left")
    for col in ("stage", "state", "rows in", "rows out", "failed", "failed upstream", "rejected", "LLM calls", "tokens",
                "of which cached in", "of which reasoning", "cost USD", "last run: HTTP / cache"):
        table.add_column(col, justify="left" if col in ("stage", "state") else "right", no_wrap=col in ("stage", "state"))
    totals = {"calls": 0, "tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.0}

    def usage_cells(u: dict) -> list[str]:
        """Calls, tokens (cached input and reasoning apart: priced apart) and cost."""
        tokens = u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
        return [f"{u['calls']:,}", f"{tokens:,}", f"{u.get('cached_tokens', 0):,}",
                f"{u.get('reasoning_tokens', 0):,}", f"{u['cost_usd']:.4f}"] if u else [""] * 5

    for s in states:
        llm, c = s["llm"], s["counts"]
        totals["calls"] += llm.get("calls", 0)
        totals["tokens"] += llm.get("prompt_tokens", 0) + llm.get("completion_tokens", 0)
        for k in ("cached_tokens", "reasoning_tokens", "cost_usd"):
            totals[k] += llm.get(k, 0)
        table.add_row(
            s["stage"], s["state"], _cell(c["in"]), _cell(c["out"] if c["out"] is not None else s["rows"]),
            _cell(c["failed"]), _cell(c["failed_upstream"]), _cell(c["rejected"]), *usage_cells(llm),
            f"{llm['http_calls']:,} / {llm['cache_hits']:,}" if llm else "",
        )
        for column, u in s["llm_parts"].items():  # e.g. the judge cascade's two judges
            table.add_row(f"  {column.removeprefix('usage_')}", "", "", "", "", "", "", *usage_cells(u), "", style="dim")
    table.add_row("total", "", "", "", "", "", "", f"{totals['calls']:,}", f"{totals['tokens']:,}",
                  f"{totals['cached_tokens']:,}", f"{totals['reasoning_tokens']:,}", f"{totals['cost_usd']:.4f}", "")
    console.print(table)
    spend = _spend(run)
    if spend:
        console.print(f"run budget: {spend}")
    for s in states:  # stages that reject rows by name before the judge (filters)
        by_name = (s["summary"] or {}).get("failed_filters") or {}
        if by_name:
            console.print(f"{s['stage']}: {s['summary'].get('rejected', 0):,} rejected before the judge")
            for name, n in by_name.items():
                console.print(f"  {name}: {n:,}")
    # The judging stage: the one whose summary counts accepted rows.
    judging = next((s for s in states if "accepted" in (s["summary"] or {})), None)
    summ = judging["summary"] if judging else {}
    if summ:
        accepted, c = summ.get("accepted", 0), judging["counts"]
        console.print(
            f"accepted {accepted:,} of {summ.get('candidates', 0):,} candidates"
            f" (rejected {summ.get('rejected', 0):,}, failed {c['failed'] or 0:,}, failed upstream {c['failed_upstream'] or 0:,})"
            + (f"; per accepted row: {totals['calls'] / accepted:.2f} calls, "
               f"{totals['tokens'] / accepted:,.0f} tokens, ${totals['cost_usd'] / accepted:.5f}" if accepted else "")
        )
        for check, rate in summ.get("pass_rate_per_check", {}).items():
            console.print(f"  {check}: {rate:.1%} pass ({summ.get('failed_checks', {}).get(check, 0):,} failed)")
        casc = summ.get("cascade")
        if casc:
            console.print(
                f"judge cascade ({casc['first_model']}, threshold {casc['threshold']:g}): "
                f"{casc['rejected_by_first_judge']:,} of {casc['first_judged']:,} rejected by the first judge, "
                f"{casc['sent_to_judge']:,} sent to the judge"
            )
    for s in states:  # what a stage adds (the judge calibration)
        for line in s["notes"]:
            console.print(line)
    note = _release_note(run, states)
    if note:
        console.print(note)
