"""`infir calibrate-judge`: run the stage that owns a judge cascade's calibration (`calibrate(ctx)`,
the verify stage) on its upstream's rows, with the run's LLM client. The stage is found by what it
can do, not by name, so the runner still names no stage."""

from __future__ import annotations

from pipeline.errors import InfirError
from pipeline.runner import llm
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.llm import llm_prepare
from pipeline.runner.run import context


def calibrate_judge(pipe: Pipeline, cfg, rows: int | None = None, seed: int | None = None) -> tuple[dict, list[str]]:
    """(the calibration written to the run, its lines as `status` shows them)."""
    stage = next((s for s in pipe.llm_stages() if hasattr(s, "calibrate")), None)
    if stage is None:
        raise InfirError("no stage of this pipeline has a judge cascade to calibrate")
    ctx = context(pipe, stage, cfg)
    llm_prepare(ctx, stage)
    ctx.upstream_success()  # a clear error when the upstream has not run
    ctx.client = llm.make_client(cfg)
    try:
        cal = stage.calibrate(ctx, rows=rows, seed=seed)
    finally:
        ctx.client.close()
    return cal, stage.status_lines(ctx.run_dir)
