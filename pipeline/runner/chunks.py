"""The runner of row stages (every LLM stage, and `filter`): stream input rows in fixed-size chunks, turn each
chunk into an output shard, skip shards an interrupted attempt already finished.

Chunk k always holds input rows [k*S, (k+1)*S) in input order, the stage's identity (input
fingerprint, config, prompts) is checked before resuming, and a shard is kept only if the hash of
the rows it was made from matches this chunk's, so a kept shard is exactly the shard this attempt
would write. A rerun after failed rows redoes the shards holding them (their other rows, and every
response already paid for, come back from the LLM cache), and a downstream stage redoes only the
shards whose input rows changed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InfirError
from pipeline.runner.watch import StageWatch
from pipeline.store import StageOutput, canonical_json, iter_tables, shard_name


def iter_chunks(stage_dir: Path, size: int) -> Iterator[list[dict]]:
    # Rows become Python dicts one chunk at a time: a 50,000-row upstream shard never exists as
    # 50,000 dicts at once, so memory does not grow with the upstream shard size.
    buf: list[dict] = []
    for _, table in iter_tables(stage_dir):
        for batch in table.to_batches(max_chunksize=size):
            for row in batch.to_pylist():
                buf.append(row)
                if len(buf) >= size:
                    yield buf
                    buf = []
    if buf:
        yield buf


def run_chunks(ctx, stage, total_rows: int) -> Counter:
    """Process every chunk of the upstream rows (or adopt its finished shard); returns counts of
    kept/new shards and the stage's own tally (`stage.tally`).

    Rows failed in this stage (not upstream: `stage.error_column`) are counted per shard, so that
    a rerun redoes exactly the shards holding them. `stage.prepare(ctx, rows)` (retrieval,
    building requests: no LLM) runs on one worker thread, one chunk ahead, while the current chunk
    waits on the endpoint; its result is passed on as `stage.process(ctx, rows, prepared)`. All
    preparing happens on that one thread, in chunk order, so what it touches (retrieval indexes)
    is never used by two threads."""
    out, client, schema = ctx.out, ctx.client, ctx.schema
    counts: Counter = Counter()
    tally: Counter = Counter()
    error_column = stage.error_column

    def count_failed(table: pa.Table) -> int:
        return own_failures(table, error_column)

    pool = ThreadPoolExecutor(1, thread_name_prefix=f"{stage.name}-prepare")
    chunks = enumerate(iter_chunks(ctx.upstream_dir, stage.shard_rows(ctx.cfg)))

    def take():
        """The next chunk, its input hash, whether its shard can be kept, and its preparation."""
        item = next(chunks, None)
        if item is None:
            return None
        k, rows = item
        digest = rows_hash(rows)
        keep = out.can_adopt(shard_name(k), digest)
        return k, rows, digest, keep, (None if keep else pool.submit(stage.prepare, ctx, rows))

    try:
        interval = getattr(getattr(ctx.cfg, "run", None), "progress_interval_s", 30.0)
        with StageWatch(stage.name, total_rows, client, interval, ctx.quiet, ctx.options.get("build_rest_usd")) as watch:
            ctx.on_result = watch.on_result
            nxt = take()
            while nxt is not None:
                k, rows, digest, keep, prepared = nxt
                nxt = take()  # the next chunk is prepared while this one runs
                name = shard_name(k)
                table = out.adopt_shard(name, input_hash=digest, count_failed=count_failed) if keep else None
                if table is not None:
                    # As written, not as read back (Parquet names list items "element"): what on_shard
                    # derives from it must be byte-identical to an uninterrupted run's.
                    table = table.cast(schema)
                    counts["shards resumed"] += 1
                    watch.adopted(len(rows))
                else:
                    prepared = prepared or pool.submit(stage.prepare, ctx, rows)  # an unreadable shard to redo
                    watch.chunk_started()
                    processed = stage.process(ctx, rows, prepared.result())
                    _stop_if_client_stopped(client, out, watch)
                    watch.chunk_done(len(rows))
                    table = pa.Table.from_pylist(processed, schema=schema)
                    out.write_shard(name, table, failed=count_failed(table), input_hash=digest)
                    counts["shards written"] += 1
                stage.tally(ctx, tally, table)
                stage.on_shard(ctx, k, table)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error_column is not None:
        counts["failed rows retried"] = out.retrying
    return stage.summary(ctx, tally, counts)


def rows_hash(rows: list[dict]) -> str:
    """What a shard is made from: its input rows, in order, by content."""
    return hashlib.sha256(canonical_json(rows).encode("utf-8")).hexdigest()[:24]


def own_failures(table: pa.Table, error_column: str | None) -> int:
    """Rows whose `error_column` is set while every upstream `*_error` column is empty: a row that
    failed upstream fails here too, and retrying it here would change nothing. A stage's schema
    extends its upstream's, so the upstream columns are the ones before `error_column`."""
    if error_column is None or error_column not in table.column_names:
        return 0
    names = table.column_names
    mask = pc.is_valid(table.column(error_column))
    for c in names[: names.index(error_column)]:
        if c.endswith("_error"):
            mask = pc.and_(mask, pc.is_null(table.column(c)))
    return int(pc.sum(mask).as_py() or 0)


def _stop_if_client_stopped(client, out: StageOutput, watch) -> None:
    # A chunk cut short by the budget or a fatal API error is not written: its rows would be
    # recorded as failures, and the rerun that resumes from the cache must redo them.
    if client is None:
        return
    if client.budget_exhausted:
        f = watch.figures()
        spent = f.get("run_spent_usd", client.totals.cost_usd)
        cap = f.get("run_cap_usd")
        rest = ""
        if f["projected_stage_usd"] is not None:
            rest = (f"; the rest of this stage would cost about ${max(f['projected_stage_usd'] - f['stage_spent_usd'], 0):.4f}"
                    " (`infir build --dry-run` prices the later stages)")
        raise InfirError(
            f"{out.dir}: stopped at the cost budget (llm.max_cost_usd = ${cap if cap is not None else 0:.2f}; "
            f"the run has spent ${spent:.4f}){rest}; finished shards and every paid response are kept: "
            "raise the budget and rerun to resume"
        )
    if client.stop_reason:
        raise InfirError(f"{out.dir}: stopped: {client.stop_reason}; rerun to resume once it is fixed")
