"""Where a row stage's chunks run: `run.executor = "local"` (this process: `chunks.run_chunks`, the
default) or `"ray"` (one Ray task per shard, `ray_executor.run_chunks`). Both write the same shard
bytes, so a run can switch executors between attempts and resume."""

from __future__ import annotations

from collections import Counter


def run_chunks(ctx, stage, total_rows: int) -> Counter:
    # Batch mode sends a stage's requests through the Batch API from this process first: the
    # provider does the parallel work, and what is left is a cache read, so it runs locally.
    if ctx.cfg.run.executor == "ray" and not (ctx.client is not None and ctx.cfg.llm.mode == "batch"):
        from pipeline.runner.executors.ray_executor import run_chunks as run_on_ray

        return run_on_ray(ctx, stage, total_rows)
    from pipeline.runner.executors.local import run_chunks as run_here

    return run_here(ctx, stage, total_rows)
