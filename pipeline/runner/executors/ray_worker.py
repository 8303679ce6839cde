"""One chunk of a row stage on a Ray worker: rebuild the stage's context from what the driver sent,
run `stage.prepare` + `stage.process` exactly as the local loop does, write the shard atomically
under the stage folder, and return what the driver needs to record it.

Atomic: the shard is written under a temporary name unique to this process and attempt, then
renamed, so a task killed mid-write leaves only a temp file (the driver's next attempt removes it),
and two copies of one task (a retry racing a slow original) each rename a complete file: the
folder never holds a mixed or partial shard. The driver records the shard by reading back what
is on disk, never by trusting the task's answer.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import pyarrow as pa

from pipeline.runner.shape import Context, LLMStage
from pipeline.store import shard_name
from pipeline.store.shards import write_parquet_atomic


def chunk_task(spec: dict, k: int, rows: list[dict], limits, ledger) -> dict:
    """The body of the Ray task (the driver wraps it with `ray.remote`)."""
    if spec.get("cwd") and os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])  # relative paths of the config (prompts, prices) as the driver sees them
    ctx = Context(**spec["ctx"])
    stage = ctx.stage
    client = None
    if isinstance(stage, LLMStage):
        from pipeline.runner.llm import llm_prepare

        llm_prepare(ctx, stage)
        client = ctx.client = worker_client(ctx, spec["group"], limits, ledger, owner=f"{spec['group']}:{k}")
    try:
        prepared = stage.prepare(ctx, rows)
        processed = stage.process(ctx, rows, prepared)
    finally:
        if client is not None:
            client.close()
    answer = {"k": k, "pid": os.getpid(), "totals": asdict(client.totals) if client is not None else None}
    if client is not None and (client.budget_exhausted or client.stop_reason):
        # As locally: a chunk cut short is not written; the resume redoes it from the cache.
        return {**answer, "budget_exhausted": client.budget_exhausted, "stopped": client.stop_reason or "budget"}
    table = pa.Table.from_pylist(processed, schema=ctx.schema)
    write_parquet_atomic(table, ctx.run_dir / stage.name / shard_name(k))
    return answer


def worker_client(ctx, group: str, limits, ledger, owner: str):
    """The worker's LLM client: its own cache file (reading the run's cache and its siblings'), the
    run's spend ledger through the driver's ledger actor (the budget), the run's shared limiter when
    a rate limit is set, and `llm.concurrency` already divided by the driver."""
    import ray

    from pipeline.llm.cache_merge import WorkerCache
    from pipeline.llm.client import make_client
    from pipeline.runner.executors.ray_limits import RemoteLedger, RemoteLimiter

    import pipeline.generation.offline_backend  # noqa: F401  registers the "offline" scripted backend

    s = ctx.cfg.llm
    client = make_client(s, cache=WorkerCache(s.cache_path, group) if s.cache_path is not None else False)
    # An earlier attempt of this task died holding reservations: they would never be settled.
    ray.get(ledger.release_owner.remote(owner))
    client.ledger = RemoteLedger(ledger, owner, s.max_cost_usd)
    if limits is not None:
        client.limiter = RemoteLimiter(limits)
    return client
