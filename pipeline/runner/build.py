"""`infir build`: every stage in pipeline order (finished ones skipped), optionally sized for a
target of accepted rows first (`plan.sized_config`), or only priced (`--dry-run`)."""

from __future__ import annotations

from typing import Callable

from pipeline.errors import InfirError
from pipeline.runner.estimate import dry_run as estimate, quick_estimates
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.prices import DRY_RUN, PLAN, check_prices
from pipeline.runner.run import run_stage
from pipeline.runner.shape import LLMStage, StageResult
from pipeline.runner.stream import BuildProjection, run_streamed, stream_groups, streams


def run_stages(pipe: Pipeline, stages: list, cfg, force: bool) -> list[StageResult]:
    """Run the stages in order; with `run.stream` (the default), each run of consecutive row stages
    at once, streamed (`stream.run_streamed`). When the first LLM stage is reached, the LLM stages
    are estimated from a sample of their input (sends nothing), so each one's progress lines can show
    the build's projected total: spent so far + this stage's projection + the stages after it."""
    results, estimates = [], None
    llm_names = [s.name for s in stages if isinstance(s, LLMStage)]
    groups = stream_groups(stages) if streams(cfg) else [[s] for s in stages]
    for group in groups:
        names = [s.name for s in group if isinstance(s, LLMStage)]
        later_usd = None
        if names:
            if estimates is None:
                try:
                    estimates = quick_estimates(pipe, cfg, llm_names)
                except InfirError:
                    estimates = {}  # a projection is a nicety: never a reason to stop
            later = llm_names[llm_names.index(names[-1]) + 1 :]
            if estimates and all(n in estimates for n in later + names):
                later_usd = sum(estimates[n] for n in later)
        if len(group) > 1:
            projection = BuildProjection(cfg, {n: estimates[n] for n in names}, later_usd) if later_usd is not None else None
            results += run_streamed(pipe, group, cfg, force, projection)
        else:
            options = {"build_rest_usd": later_usd} if later_usd is not None else {}
            results.append(run_stage(pipe, group[0].name, cfg, force=force, options=options))
    return results


def run_build(pipe: Pipeline, cfg, until: str | None = None, *, force: bool = False, dry_run: bool = False,
              as_json: bool = False, target: int | None = None, pilot: int = 200,
              echo: Callable[[str], None] = print) -> list[StageResult]:
    stages = pipe.until(until)
    # Every LLM stage's models priced before the first stage runs: a missing price found at the
    # judge would come after generate and mine had spent (prices.check_prices).
    need = DRY_RUN if dry_run else PLAN if target is not None else None
    check_prices(cfg, [s for s in stages if isinstance(s, LLMStage)], need)
    the_plan = None
    if target is not None:
        from pipeline.runner.plan import describe, sized_config

        cfg, the_plan = sized_config(pipe, cfg, target, pilot)
        for line in describe(the_plan, cfg.llm.max_cost_usd):
            echo(line)
        echo(f"build: sampling {cfg.source.sample_queries:,} source queries")
    if dry_run:
        for stage in stages:  # free, and the estimate needs their rows
            if isinstance(stage, LLMStage):
                break
            run_stage(pipe, stage.name, cfg, force=force)
        estimate(pipe, cfg, [s.name for s in stages], as_json=as_json)
        return []
    results = run_stages(pipe, stages, cfg, force)
    if the_plan is not None:
        judged = [r.success.get("summary", {}) for r in results if "accepted" in r.success.get("summary", {})]
        got = judged[-1]["accepted"] if judged else 0
        if got < target:
            why = "not enough source queries" if not the_plan.enough_queries else "the acceptance came out below the pilot's interval"
            echo(f"build: {got:,} accepted, short of --target-accepted {target:,}: {why}")
        else:
            echo(f"build: {got:,} accepted (target {target:,})")
    return results
