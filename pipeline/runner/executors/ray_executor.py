"""The Ray executor: the chunk loop of `chunks.run_chunks`, with each chunk that must be (re)made run
as one Ray task (`ray_worker.chunk_task`) instead of in this process.

The driver (this process) keeps everything that decides the output's identity and order: it holds
the stage lock, streams the upstream chunks (chunk k = input rows [k*S, (k+1)*S), as locally),
adopts finished shards, submits the rest, records each shard a task wrote by reading it back
(`StageOutput.register_shard`: its sha256 is what is on disk), runs `tally` / `on_shard` and
writes `_SUCCESS.json`. A task killed with its worker is retried by Ray (`max_retries`); its shard
is written atomically, so a retry or a duplicate can only replace a complete shard with the same
rows. LLM responses of the workers land in per-worker cache files, merged into the run's cache
here at the end of the stage and at the start of a resume (`llm.cache_merge`).
"""

from __future__ import annotations

import os
from collections import Counter

from pipeline.errors import InfirError
from pipeline.llm.cache_merge import merge_worker_caches
from pipeline.runner.chunks import _stop_if_client_stopped, iter_chunks, own_failures, rows_hash
from pipeline.runner.executors.ray_session import ensure_ray
from pipeline.runner.shape import LLMStage
from pipeline.runner.watch import StageWatch
from pipeline.store import shard_name

#: Retries of a task whose worker died (SIGKILL, OOM, a lost node); an exception inside the stage
#: code is not retried (it would fail again the same way) and reaches the user as one line.
MAX_TASK_RETRIES = 3


def run_chunks(ctx, stage, total_rows: int) -> Counter:
    ray = ensure_ray(ctx.cfg.run.ray_address)
    out = ctx.out
    is_llm = isinstance(stage, LLMStage)
    group = f"{ctx.cfg.run.name}-{stage.name}"
    cache_path = ctx.cfg.llm.cache_path if is_llm else None
    if cache_path is not None:
        merge_worker_caches(cache_path, group)  # a resume: what workers of a killed attempt paid for
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if is_llm:
        slots = min(slots, ctx.cfg.llm.concurrency)
    limits = _shared_limits(ray, ctx.cfg.llm) if is_llm else None
    ledger = _shared_ledger(ray, ctx) if is_llm else None
    spec = _spec(ctx, stage, group, slots)
    remote = ray.remote(max_retries=MAX_TASK_RETRIES, retry_exceptions=False)(_chunk_task)
    counts, tally = Counter(), Counter()
    pending: dict = {}  # ObjectRef -> (k, number of rows, input hash)
    stopped: list[dict] = []

    def count_failed(table):
        return own_failures(table, stage.error_column)

    def done(k: int, table) -> None:
        table = table.cast(ctx.schema)  # as written (see chunks.run_chunks)
        stage.tally(ctx, tally, table)
        stage.on_shard(ctx, k, table)

    def collect(watch, block_until: int) -> None:
        while len(pending) > block_until:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            k, n, digest = pending.pop(ref)
            answer = _result(ray, ref, out.dir, k)
            _add_totals(ctx.client, answer.get("totals"))
            if answer.get("stopped"):
                stopped.append(answer)
                continue
            table = out.register_shard(shard_name(k), input_hash=digest, count_failed=count_failed)
            if table is None:
                raise InfirError(f"{out.dir / shard_name(k)}: a Ray task reported it written but it cannot be read")
            counts["shards written"] += 1
            watch.chunk_done(n, watch.chunk_started())  # its answers came from the workers, uncounted
            done(k, table)

    warmed = False
    try:
        with StageWatch(stage.name, total_rows, ctx.client, ctx.cfg.run.progress_interval_s, ctx.quiet,
                        ctx.options.get("build_rest_usd")) as watch:
            for k, rows in enumerate(iter_chunks(ctx.upstream_dir, stage.shard_rows(ctx.cfg))):
                digest = rows_hash(rows)
                name = shard_name(k)
                if out.can_adopt(name, digest):
                    table = out.adopt_shard(name, input_hash=digest, count_failed=count_failed)
                    if table is not None:
                        counts["shards resumed"] += 1
                        watch.adopted(len(rows))
                        done(k, table)
                        continue
                if not warmed:
                    _warm_up(ctx, stage, rows)
                    warmed = True
                collect(watch, 2 * slots - 1)
                pending[remote.remote(spec, k, rows, limits, ledger)] = (k, len(rows), digest)
            collect(watch, 0)
            if stopped:  # as locally: the same message, after every finished shard is recorded
                ctx.client.budget_exhausted = any(a["budget_exhausted"] for a in stopped)
                ctx.client.stop_reason = next((a["stopped"] for a in stopped if not a["budget_exhausted"]), None)
                _stop_if_client_stopped(ctx.client, out, watch)
    finally:
        for ref in pending:  # an error: stop the other tasks (their shards are not recorded)
            ray.cancel(ref, force=True)
        if cache_path is not None and not pending:
            merge_worker_caches(cache_path, group)
        _release_all(ray, ledger)
    if stage.error_column is not None:
        counts["failed rows retried"] = out.retrying
    return stage.summary(ctx, tally, counts)


def _warm_up(ctx, stage, rows: list[dict]) -> None:
    """Build the retrieval indexes once, here, before workers would race to build them; a dense
    index's embeddings are made on Ray Data first."""
    retrieval = getattr(stage.settings(ctx.cfg), "retrieval", None)
    if retrieval is not None:
        from pipeline.generation.retrieval_glue import encode_collection_on_ray

        encode_collection_on_ray(ctx, retrieval)
    stage.prepare(ctx, rows[:1])


def _chunk_task(spec: dict, k: int, rows: list[dict], limits, ledger) -> dict:
    from pipeline.runner.executors.ray_worker import chunk_task

    return chunk_task(spec, k, rows, limits, ledger)


def _spec(ctx, stage, group: str, slots: int) -> dict:
    """What a worker needs to rebuild the stage's context (the config is a pydantic model: it
    pickles). Paths absolute: a worker may start in another folder."""
    cfg = ctx.cfg.model_copy(deep=True)
    if isinstance(stage, LLMStage):
        # The run's concurrency, divided between the tasks that run at once (see ray_limits).
        cfg.llm.concurrency = max(1, ctx.cfg.llm.concurrency // slots)
        if cfg.llm.cache_path is not None:
            cfg.llm.cache_path = cfg.llm.cache_path.resolve()
    fields = dict(
        cfg=cfg, stage=stage, run_dir=ctx.run_dir.resolve(),
        upstream_dir=ctx.upstream_dir.resolve() if ctx.upstream_dir else None, schema=ctx.schema,
        collection_dir=ctx.collection_dir.resolve() if ctx.collection_dir else None,
        sections=list(ctx.sections), force=ctx.force, options=dict(ctx.options),
    )
    return {"ctx": fields, "group": group, "cwd": os.getcwd()}


def _shared_limits(ray, s):
    """The run's limiter actor, when the run has a rate limit (else none: no round trip)."""
    if s.requests_per_minute is None and s.tokens_per_minute is None:
        return None
    from pipeline.runner.executors.ray_limits import SharedLimits

    actor = ray.remote(num_cpus=0)(SharedLimits)
    return actor.remote(s.requests_per_minute, s.tokens_per_minute)


def _shared_ledger(ray, ctx):
    """The run's spend ledger as an actor on this (the driver's) node: it owns the SQLite file
    locally, next to this process's own connection to it (see ray_limits)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.runner.executors.ray_limits import SharedLedger
    from pipeline.runner.llm import SPEND_LEDGER

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, scheduling_strategy=here)(SharedLedger)
    return actor.remote(str((ctx.run_dir / SPEND_LEDGER).resolve()), ctx.cfg.llm.max_cost_usd, ctx.stage.name)


def _release_all(ray, ledger) -> None:
    """Reservations of cancelled or killed tasks: nothing will settle them."""
    if ledger is None:
        return
    try:
        ray.get(ledger.release_all.remote())
    except ray.exceptions.RayError:
        pass  # the actor died with its reservations' pid: the next reserve drops them


def _result(ray, ref, out_dir, k: int) -> dict:
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, InfirError):
            raise InfirError(str(cause)) from None
        raise InfirError(f"{out_dir / shard_name(k)}: failed on a Ray worker: {cause or e}") from None
    except RayError as e:  # the worker died more than MAX_TASK_RETRIES times, or the node was lost
        raise InfirError(f"{out_dir / shard_name(k)}: Ray task lost ({type(e).__name__}); rerun to resume") from None


def _add_totals(client, totals: dict | None) -> None:
    if client is None or not totals:
        return
    for name, v in totals.items():
        setattr(client.totals, name, getattr(client.totals, name) + v)
