"""`--dry-run`: what the LLM stages would send, and what it would cost, before anything is spent.

Every request is built exactly as the stage would build it (same prompt files, variables, model
and parameters, hence the same cache keys), so requests already in the cache are counted as free.
A stage whose input exists is priced from that input. A stage whose upstream has not run yet is
priced from the source rows with stand-ins of typical length for the texts the upstream LLM would
write (instruction: the passage's first words; poisoned passages: the positive passage), and every
row is assumed to reach the judge: an upper bound, marked "estimated" in the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InfirError
from pipeline.progress import console
from pipeline.stages import llm_common as lc
from pipeline.stages.common import run_dir
from pipeline.stages.sharded import iter_chunks
from pipeline.store import read_success

LLM_STAGES = ("generate", "mine", "verify")
UPSTREAM = {"generate": "source", "mine": "generate", "verify": "mine"}
# About how many words of the passage stand in for an instruction not yet written (~90 tokens).
_STAND_IN_WORDS = 50


@dataclass
class StageEstimate:
    stage: str
    model: str
    rows: int = 0
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    batch_cost_usd: float = 0.0
    exact: bool = True
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _stand_in(row: dict, stage: str) -> dict:
    """A source row dressed as the input `stage` would get, with texts of typical length."""
    r = dict(row)
    instruction = " ".join((row["document_positive"] or "").split()[:_STAND_IN_WORDS])
    r.setdefault("generate_error", None)
    r["instruction_positive"] = instruction
    if stage == "verify":
        r.update(
            mine_error=None,
            instruction_negative=instruction,
            query_negative=row["query_positive"],
            hard_negative_document_1=row["document_positive"],
            hard_negative_document_2=row["document_positive"],
        )
    return r


def _tasks(cfg, stage: str, rows: list[dict], prompt, model: str, params: dict, exact: bool) -> list:
    if stage == "generate":
        from pipeline.stages.generate import build_tasks

        return build_tasks(cfg, rows, prompt, model, params)
    if stage == "mine":
        from pipeline.stages.mine import build_tasks as mine_tasks

        return mine_tasks(cfg, rows, prompt, model, params)[0]
    from pipeline.generation.models import JudgeVerdicts
    from pipeline.stages.verify import build_tasks as judge_tasks, judge_variables

    if exact:
        return judge_tasks(rows, prompt, model, params, cfg.verify)[0]
    # Stand-ins would trip the pre-filters (I- equals I+): count every row as judged.
    return [lc.task(r["id"], prompt, judge_variables(r), JudgeVerdicts, model, params) for r in rows]


def estimate_stage(cfg, stage: str, client) -> StageEstimate:
    rd = run_dir(cfg)
    section = getattr(cfg, stage)
    prompt = lc.prompt(cfg, section.prompt)
    model = lc.effective_model(cfg, section.model)
    params = lc.stage_params(cfg, stage, model)
    upstream = UPSTREAM[stage]
    exact = read_success(rd / upstream) is not None
    if not exact and read_success(rd / "source") is None:
        raise InfirError(f"{rd}: the dry run needs the source stage's rows; run `infir source` first")
    est = StageEstimate(stage, model, exact=exact)
    if not exact:
        est.notes.append(
            f"estimated: {upstream} has not run; stand-in texts of typical length"
            + ("; every row judged (an upper bound)" if stage == "verify" else "")
        )
    price = client.prices.lookup(model)
    discount = price.batch_discount if price is not None else 1.0
    for rows in iter_chunks(rd / (upstream if exact else "source"), section.shard_rows):
        if not exact:
            rows = [_stand_in(r, stage) for r in rows]
        est.rows += len(rows)
        e = client.estimate(_tasks(cfg, stage, rows, prompt, model, params, exact))
        est.calls += e["calls"]
        est.cached += e["cached"]
        est.prompt_tokens += e["prompt_tokens"]
        est.completion_tokens += e["completion_tokens"]
        est.cost_usd += e["cost_usd"]
        est.batch_cost_usd += e.get("batch_cost_usd", e["cost_usd"] * discount)
    if price is None:
        est.notes.append(f"no price for {model}: counted as $0")
    return est


class _NoBackend:
    name = "dry-run"

    async def complete(self, body, task):  # pragma: no cover - estimate() never sends
        raise RuntimeError("a dry run sends no requests")


def dry_run(cfg, stages: list[str]) -> list[StageEstimate]:
    """Estimate the given LLM stages and print one table; sends nothing, writes nothing."""
    from pipeline.llm import make_client

    # No backend: a dry run needs no key and must not be able to send anything.
    client = make_client(cfg.llm, backend=_NoBackend())
    try:
        estimates = [estimate_stage(cfg, s, client) for s in stages if s in LLM_STAGES]
    finally:
        client.close()
    print_estimates(estimates, Path(cfg.llm.cache_path) if cfg.llm.cache_path else None)
    return estimates


def print_estimates(estimates: list[StageEstimate], cache_path: Path | None) -> None:
    from rich.table import Table

    t = Table(title="dry run: LLM requests and cost (nothing sent)", title_justify="left")
    for col in ("stage", "model", "rows", "calls", "cached", "in tokens", "out tokens", "online $", "batch $"):
        t.add_column(col, justify="left" if col in ("stage", "model") else "right", no_wrap=True)
    tot = StageEstimate("total", "")
    for e in estimates:
        t.add_row(
            e.stage + ("" if e.exact else " *"), e.model, f"{e.rows:,}", f"{e.calls:,}", f"{e.cached:,}",
            f"{e.prompt_tokens:,}", f"{e.completion_tokens:,}", f"{e.cost_usd:.4f}", f"{e.batch_cost_usd:.4f}",
        )
        for k in ("calls", "cached", "prompt_tokens", "completion_tokens", "cost_usd", "batch_cost_usd"):
            setattr(tot, k, getattr(tot, k) + getattr(e, k))
    t.add_row(
        "total", "", "", f"{tot.calls:,}", f"{tot.cached:,}", f"{tot.prompt_tokens:,}",
        f"{tot.completion_tokens:,}", f"{tot.cost_usd:.4f}", f"{tot.batch_cost_usd:.4f}", style="bold",
    )
    # The estimate is the command's result: stdout, wide enough to stay readable when piped.
    from rich.console import Console

    out = Console(highlight=False, width=None if console.is_terminal else 120)
    out.print(t)
    for e in estimates:
        for n in e.notes:
            out.print(f"  {e.stage}: {n}")
    out.print(
        "  output tokens come from each prompt's expected_output_tokens; repairs and retries are not counted"
        + (f"; cached requests (in {cache_path}) cost nothing" if cache_path else "")
    )
