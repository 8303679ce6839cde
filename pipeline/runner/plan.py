"""`infir plan --target-accepted N`: size a run from a pilot before paying for it.

The pilot is the same run on the first `pilot` queries of the same seeded sample (the source
draws queries in one seeded order, so a sample of K queries is the first K of a larger one): it
runs every stage up to the judge in `runs/<run>-pilot/`, through the run's own LLM cache, so the
full run pays nothing again for the pilot's rows. From it: rows per query, the acceptance rate with
a 95% Wilson interval, and the cost per candidate as its rows record it (what every answer cost
when it was made, cache hits included). The plan is the number of source queries to sample and
the projected cost, online and at batch prices, each with the interval that follows from the
acceptance's.

A stage that sends more than one kind of request is priced per kind, each at its own model's batch
discount: with the judge cascade the first judge answers every candidate and the reasoning judge
only the share it lets through, as the pilot measured it (the dry run prices the same two parts,
with the share from the calibration). The pilot uses the run's calibration (its threshold).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.columns import usage_columns
from pipeline.errors import InfirError
from pipeline.generation.cascade import calibration_path
from pipeline.llm.pricing import PriceTable
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.prices import PLAN, check_prices
from pipeline.runner.headroom import headroom
from pipeline.runner.llm import llm_prepare
from pipeline.runner.run import context, run_dir, run_stage
from pipeline.runner.shape import LLMStage
from pipeline.store import read_stage_table, require_stage

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved near 0 and 1 and for small n,
    unlike the normal approximation; five lines, so no statistics package for it)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Plan:
    target_accepted: int
    pilot_queries: int
    pilot_candidates: int
    pilot_accepted: int
    rows_per_query: float
    acceptance: float
    acceptance_low: float
    acceptance_high: float
    cost_per_candidate_usd: float
    batch_cost_per_candidate_usd: float
    queries_needed: int
    queries_needed_low: int
    queries_needed_high: int
    queries_available: int
    cost_usd: float
    cost_low_usd: float
    cost_high_usd: float
    batch_cost_usd: float
    pilot_run: str
    # Per usage column (kind of request): its stage and model, the share of candidates that sent it,
    # and its online and batch cost per candidate (the judge cascade: `verify_first` on every
    # candidate, `verify` on the share the first judge let through).
    parts: list[dict] = field(default_factory=list)
    # Per LLM stage whose max tokens leave much unused room (`headroom.py`): the throughput a smaller
    # setting would buy under a tokens-per-minute limit, from the pilot's usage.
    headroom: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def enough_queries(self) -> bool:
        return self.queries_needed_high <= self.queries_available


def _pilot_cfg(cfg, pilot: int):
    run = cfg.run.model_copy(update={"name": f"{cfg.run.name}-pilot"})
    source = cfg.source.model_copy(update={"sample_queries": pilot})
    return cfg.model_copy(update={"run": run, "source": source})


def _judge_stage(pipe: Pipeline) -> LLMStage:
    judged = [s for s in pipe.llm_stages()]
    if not judged:
        raise InfirError("the pipeline has no LLM stage to plan for")
    return judged[-1]


def usage_models(pipe: Pipeline, cfg) -> dict[str, tuple[str, str]]:
    """The stage and model behind each usage column: `usage_<stage>` is the stage's own model
    (`<section>.model`), `usage_<stage>_<kind>` the stage's `<section>.<kind>_model` (the cascade's
    `usage_verify_first`: `verify.first_model`), as `LLMStage.models` names them."""
    out: dict[str, tuple[str, str]] = {}
    for stage in pipe.llm_stages():
        for i, (key, model) in enumerate(stage.models(cfg)):
            kind = key.rsplit(".", 1)[-1].removesuffix("model").rstrip("_")
            out[f"usage_{stage.name}" + (f"_{kind}" if kind and i else "")] = (stage.name, model)
    return out


def _corpus_costs(table, prices: PriceTable, models: dict[str, tuple[str, str]]) -> list[dict]:
    """Per usage column of the candidate rows: its model, how many rows sent it, and their online
    and batch cost (each at its own model's batch discount)."""
    parts = []
    for col in usage_columns(table.schema):
        used = [u["cost_usd"] for u in table.column(col).to_pylist() if u]
        if not used:  # a kind of request this run did not send (the cascade's column when it is off)
            continue
        if col not in models:
            raise InfirError(f"plan: no model of the pipeline's LLM stages answers the rows' {col} column")
        stage, model = models[col]
        price = prices.lookup(model)
        discount = price.batch_discount if price is not None else 1.0
        parts.append({"usage": col, "stage": stage, "model": model, "rows": len(used), "online_usd": sum(used),
                      "batch_usd": sum(used) * discount})
    return parts


def measure(pipe: Pipeline, cfg, pilot_cfg, target: int) -> Plan:
    judge = _judge_stage(pipe)
    rd = run_dir(pilot_cfg)
    first = require_stage(rd, pipe.stages[0].name)["summary"]
    verdict = require_stage(rd, judge.name)["summary"]
    queries = int(first.get("queries kept", 0)) or 1
    rows_per_query = first["rows"] / queries
    candidates, accepted = int(verdict["candidates"]), int(verdict["accepted"])
    p = accepted / candidates if candidates else 0.0
    lo, hi = wilson(accepted, candidates)
    table = read_stage_table(rd / judge.name)
    costs = _corpus_costs(table, PriceTable.for_settings(cfg.llm), usage_models(pipe, cfg))
    n = max(candidates, 1)
    per_cand = sum(c["online_usd"] for c in costs) / n
    per_cand_batch = sum(c["batch_usd"] for c in costs) / n
    parts = [{"usage": c["usage"], "stage": c["stage"], "model": c["model"], "share": round(c["rows"] / max(table.num_rows, 1), 4),
              "cost_per_candidate_usd": c["online_usd"] / n, "batch_cost_per_candidate_usd": c["batch_usd"] / n}
             for c in costs]

    def queries_for(rate: float) -> int:
        return math.ceil(target / (rate * rows_per_query)) if rate > 0 else 10**12

    need, need_lo, need_hi = queries_for(p), queries_for(hi), queries_for(lo)
    available = queries + int(first.get("queries not sampled", 0))
    cost = lambda q: q * rows_per_query * per_cand  # noqa: E731
    return Plan(
        target_accepted=target, pilot_queries=queries, pilot_candidates=candidates, pilot_accepted=accepted,
        rows_per_query=round(rows_per_query, 4), acceptance=round(p, 4), acceptance_low=round(lo, 4),
        acceptance_high=round(hi, 4), cost_per_candidate_usd=per_cand, batch_cost_per_candidate_usd=per_cand_batch,
        queries_needed=need, queries_needed_low=need_lo, queries_needed_high=need_hi, queries_available=available,
        cost_usd=cost(need), cost_low_usd=cost(need_lo), cost_high_usd=cost(need_hi),
        batch_cost_usd=need * rows_per_query * per_cand_batch, pilot_run=str(rd), parts=parts,
    )


def _share_calibration(run: Path, pilot: Path) -> None:
    """The pilot judges as the run will: with the run's judge calibration (`infir calibrate-judge`
    writes it to the run, not to the pilot), so the cascade's threshold and share are the run's."""
    src = calibration_path(run)
    if src.is_file():
        dst = calibration_path(pilot)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def plan(pipe: Pipeline, cfg, target: int, pilot: int, force: bool = False) -> Plan:
    """Run (or reuse) the pilot and size the run for `target` accepted rows."""
    if target < 1:
        raise InfirError(f"--target-accepted {target}: expected a positive number of rows")
    if pilot < 1:
        raise InfirError(f"--pilot {pilot}: expected a positive number of queries")
    pilot_cfg = _pilot_cfg(cfg, pilot)
    _share_calibration(run_dir(cfg), run_dir(pilot_cfg))
    # The plan is a cost projection: a model with no price would project $0. Refused before the pilot.
    check_prices(cfg, pipe.llm_stages(), PLAN)
    for stage in pipe.until(_judge_stage(pipe).name):
        run_stage(pipe, stage.name, pilot_cfg, force=force)
    p = measure(pipe, cfg, pilot_cfg, target)
    for stage in pipe.llm_stages():
        ctx = context(pipe, stage, pilot_cfg)
        llm_prepare(ctx, stage)
        room = headroom(stage, ctx)
        if room is not None:
            p.headroom.append(room.line())
    return p


def describe(p: Plan, cap: float | None = None) -> list[str]:
    lines = [
        f"pilot: {p.pilot_queries:,} queries -> {p.pilot_candidates:,} candidates, {p.pilot_accepted:,} accepted "
        f"({p.acceptance:.1%}, 95% interval {p.acceptance_low:.1%}-{p.acceptance_high:.1%}); "
        f"{p.rows_per_query:.2f} candidates per query; ${p.cost_per_candidate_usd:.5f} per candidate",
        f"for {p.target_accepted:,} accepted rows: sample {p.queries_needed:,} source queries "
        f"(interval {p.queries_needed_low:,}-{p.queries_needed_high:,}; the source offers {p.queries_available:,})",
        f"projected cost: ${p.cost_usd:.4f} online (interval ${p.cost_low_usd:.4f}-${p.cost_high_usd:.4f}), "
        f"${p.batch_cost_usd:.4f} in batch mode",
    ]
    stages = [c["stage"] for c in p.parts]
    if len(set(stages)) < len(stages):  # a stage with two kinds of request: the judge cascade
        lines.append("per candidate: " + "; ".join(
            f"{c['usage'].removeprefix('usage_')} ({c['model']}) ${c['cost_per_candidate_usd']:.5f} on {c['share']:.0%} of rows"
            for c in p.parts))
    lines += [f"rate limit: {h}" for h in p.headroom]
    if not p.enough_queries:
        lines.append(f"not enough source queries: up to {p.queries_needed_high:,} needed, {p.queries_available:,} available")
    if cap is not None:
        verdict = "within" if p.cost_high_usd <= cap else "OVER"
        lines.append(f"budget: ${cap:.2f} (llm.max_cost_usd): the projection's upper end is {verdict} it")
    return lines


def sized_config(pipe: Pipeline, cfg, target: int, pilot: int, force: bool = False):
    """`build --target-accepted N`: the config whose source samples enough queries for N accepted
    rows at the acceptance's lower bound (so N is reached with ~97.5% confidence), and its plan.
    Refuses before anything is paid when the projection's upper end passes the budget."""
    p = plan(pipe, cfg, target, pilot, force=force)
    cap = cfg.llm.max_cost_usd
    if cap is not None and p.cost_high_usd > cap:
        raise InfirError(
            f"--target-accepted {target}: projected up to ${p.cost_high_usd:.4f} (point ${p.cost_usd:.4f}), over the "
            f"budget of ${cap:.2f} (--max-cost-usd / llm.max_cost_usd); raise the budget or lower the target"
        )
    queries = min(p.queries_needed_high, p.queries_available)
    source = cfg.source.model_copy(update={"sample_queries": queries})
    return cfg.model_copy(update={"source": source}), p
