"""`--dry-run`: what the LLM stages would send, and what it would cost, before anything is spent.

Every request is built exactly as the stage would build it (same prompt files, variables, model
and parameters, hence the same cache keys), so requests already in the cache are counted as free.
A stage whose input exists is priced from that input. A stage whose upstream has not run yet is
priced from the source rows with stand-ins of typical length for the texts the upstream LLM would
write (instruction: the passage's first words; poisoned passages: the positive passage), and every
row is assumed to reach the judge: an upper bound, marked "estimated" in the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.columns import REJECTIONS
from pipeline.errors import InfirError
from pipeline.llm.pricing import PriceTable
from pipeline.progress import console
from pipeline.runner.chunks import iter_chunks
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.prices import DRY_RUN, check_prices
from pipeline.runner.headroom import headroom
from pipeline.runner.llm import llm_prepare
from pipeline.runner.run import context
from pipeline.runner.shape import LLMStage
from pipeline.store import read_success


@dataclass
class StageEstimate:
    stage: str
    model: str
    rows: int = 0
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # billed output: visible answers plus hidden reasoning
    reasoning_tokens: int = 0  # of completion_tokens: the price table's expectation for the model
    cost_usd: float = 0.0
    batch_cost_usd: float = 0.0
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    # A stage that sends more than one kind of request (the judge cascade) prices each apart; the
    # stage's own figures are their sum.
    parts: list["StageEstimate"] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["parts"] = [p.as_dict() for p in self.parts]
        return out

    def add(self, e: dict) -> None:
        for k in ("calls", "cached", "prompt_tokens", "completion_tokens", "cost_usd"):
            setattr(self, k, getattr(self, k) + e[k])
        self.reasoning_tokens += e.get("reasoning_tokens", 0)
        self.batch_cost_usd += e["batch_cost_usd"]


def _stage_parts(stage: LLMStage, ctx, rows: list[dict], client) -> list[tuple[str, str, dict]]:
    """(label, model, estimate) per kind of request: the stage's own `estimate_parts` (the judge
    cascade's two judges), else its `tasks`."""
    parts = getattr(stage, "estimate_parts", None)
    if parts is not None:
        return parts(ctx, rows, client)
    return [(stage.name, ctx.model, client.estimate(stage.tasks(ctx, rows)[0]))]


def _input_rows(pipe: Pipeline, stage: LLMStage, ctx):
    """Chunks of the stage's input rows: its upstream's output, or, before the upstream has run,
    the first stage's rows dressed by every stage in between (`Stage.stand_in`)."""
    if ctx.upstream_done():
        yield from iter_chunks(ctx.upstream_dir, stage.shard_rows(ctx.cfg))
        return
    first = pipe.stages[0]
    if read_success(ctx.run_dir / first.name) is None:
        raise InfirError(f"{ctx.run_dir}: the dry run needs the {first.name} stage's rows; run `infir {first.name}` first")
    between = pipe.stages[1 : pipe.stages.index(stage)]
    for rows in iter_chunks(ctx.run_dir / first.name, stage.shard_rows(ctx.cfg)):
        for s in between:
            rows = [s.stand_in(r) for r in rows]
        yield rows


def estimate_stage(pipe: Pipeline, cfg, stage: LLMStage, client, sample_rows: int | None = None) -> StageEstimate:
    ctx = context(pipe, stage, cfg)
    llm_prepare(ctx, stage)
    exact = ctx.upstream_done()
    ctx.stand_ins = not exact
    est = StageEstimate(stage.name, ctx.model, exact=exact)
    if not exact:
        est.notes.append(
            f"estimated: {ctx.upstream_dir.name} has not run; stand-in texts of typical length; "
            "every row reaches this stage (an upper bound)"
        )
    price = client.prices.lookup(ctx.model)
    discount = price.batch_discount if price is not None else 1.0
    rejected = 0
    parts: dict[str, StageEstimate] = {}
    for rows in _input_rows(pipe, stage, ctx):
        if sample_rows is not None:
            if est.rows >= sample_rows:
                break
            rows = rows[: sample_rows - est.rows]
        est.rows += len(rows)
        rejected += sum(1 for r in rows if r.get(REJECTIONS))
        for label, model, e in _stage_parts(stage, ctx, rows, client):
            e = {**e, "batch_cost_usd": e.get("batch_cost_usd", e["cost_usd"] * discount)}
            est.add(e)
            parts.setdefault(label, StageEstimate(label, model, exact=exact)).add(e)
    if len(parts) > 1:
        est.parts = list(parts.values())
        est.model = " + ".join(p.model for p in est.parts)
    notes = getattr(stage, "estimate_notes", None)
    est.notes += notes(ctx) if notes is not None else []
    room = headroom(stage, ctx)  # from the usage its finished shards recorded, if any
    if room is not None:
        est.notes.append(room.note())
    if rejected:
        est.notes.append(f"{rejected:,} row(s) rejected upstream by the filters: not sent")
    if price is None:
        est.notes.append(f"no price for {ctx.model}: counted as $0")
    return est


def quick_estimates(pipe: Pipeline, cfg, names: list[str], sample_rows: int = 64) -> dict[str, float]:
    """Online cost of each named LLM stage from its first `sample_rows` input rows, scaled to all of
    them: cheap enough to run when a build starts, for the build's projected total in the progress
    lines (the stage's own projection then recalibrates from its answers)."""
    from pipeline.llm import make_client
    from pipeline.store import read_success

    client = make_client(cfg.llm, backend=_NoBackend(), prices=PriceTable.for_settings(cfg.llm))
    out: dict[str, float] = {}
    try:
        for stage in pipe.llm_stages():
            if stage.name not in names:
                continue
            ctx = context(pipe, stage, cfg)
            source = read_success(ctx.upstream_dir) if ctx.upstream_done() else read_success(ctx.run_dir / pipe.stages[0].name)
            total = (source or {}).get("rows", 0)
            est = estimate_stage(pipe, cfg, stage, client, sample_rows=sample_rows)
            out[stage.name] = est.cost_usd * (total / est.rows) if est.rows else 0.0
    finally:
        client.close()
    return out


class _NoBackend:
    name = "dry-run"

    async def complete(self, body, task):  # pragma: no cover - estimate() never sends
        raise RuntimeError("a dry run sends no requests")


def dry_run(pipe: Pipeline, cfg, stages: list[str], as_json: bool = False) -> list[StageEstimate]:
    """Estimate the given LLM stages and print one table; sends nothing, writes nothing."""
    from pipeline.llm import make_client

    chosen = [s for s in pipe.llm_stages() if s.name in stages]
    # A price the table lacks would read $0: the estimate is refused instead, naming the model.
    check_prices(cfg, chosen, DRY_RUN)
    # No backend: a dry run needs no key and must not be able to send anything.
    client = make_client(cfg.llm, backend=_NoBackend(), prices=PriceTable.for_settings(cfg.llm))
    try:
        estimates = [estimate_stage(pipe, cfg, s, client) for s in chosen]
    finally:
        client.close()
    if as_json:
        print(json.dumps(estimates_json(estimates), indent=2))
    else:
        print_estimates(estimates, Path(cfg.llm.cache_path) if cfg.llm.cache_path else None)
    return estimates


_SUMMED = ("calls", "cached", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_usd", "batch_cost_usd")


def estimates_json(estimates: list[StageEstimate]) -> dict:
    """The dry run for scripts: per stage and in total (visible output = completion - reasoning)."""
    stages = []
    for e in estimates:
        d = e.as_dict()
        d["visible_output_tokens"] = e.completion_tokens - e.reasoning_tokens
        stages.append(d)
    total = {k: sum(getattr(e, k) for e in estimates) for k in _SUMMED}
    total["visible_output_tokens"] = total["completion_tokens"] - total["reasoning_tokens"]
    return {"stages": stages, "total": total, "sent": 0}


def print_estimates(estimates: list[StageEstimate], cache_path: Path | None) -> None:
    from rich.table import Table

    t = Table(title="dry run: LLM requests and cost (nothing sent)", title_justify="left")
    cols = ("stage", "model", "rows", "calls", "cached", "in tokens", "out: visible", "out: reasoning", "online $", "batch $")
    for col in cols:
        t.add_column(col, justify="left" if col in ("stage", "model") else "right", no_wrap=True)
    tot = StageEstimate("total", "")
    for e in estimates + [tot]:
        if e is tot:
            for k in _SUMMED:
                setattr(tot, k, sum(getattr(x, k) for x in estimates))
        t.add_row(
            e.stage + ("" if e.exact else " *"), e.model, f"{e.rows:,}" if e is not tot else "", f"{e.calls:,}",
            f"{e.cached:,}", f"{e.prompt_tokens:,}", f"{e.completion_tokens - e.reasoning_tokens:,}",
            f"{e.reasoning_tokens:,}", f"{e.cost_usd:.4f}", f"{e.batch_cost_usd:.4f}", style="bold" if e is tot else None,
        )
        for p in e.parts:  # e.g. the judge cascade's two judges
            t.add_row(
                f"  {p.stage}", p.model, "", f"{p.calls:,}", f"{p.cached:,}", f"{p.prompt_tokens:,}",
                f"{p.completion_tokens - p.reasoning_tokens:,}", f"{p.reasoning_tokens:,}", f"{p.cost_usd:.4f}",
                f"{p.batch_cost_usd:.4f}", style="dim",
            )
    # The estimate is the command's result: stdout, wide enough to stay readable when piped.
    from rich.console import Console

    out = Console(highlight=False, width=None if console.is_terminal else 120)
    out.print(t)
    for e in estimates:
        for n in e.notes:
            out.print(f"  {e.stage}: {n}")
    out.print(
        "  visible output: each prompt's expected_output_tokens; reasoning: the price file's expectation per model and"
        " effort (an assumption; a run recalibrates from its own usage); repairs and retries are not counted"
        + (f"; cached requests (in {cache_path}) cost nothing" if cache_path else "")
    )
