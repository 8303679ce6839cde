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
import queue
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InfirError
from pipeline.runner.watch import StageWatch
from pipeline.store import StageOutput, canonical_json, iter_tables, shard_name


def iter_chunks(stage_dir: Path, size: int) -> Iterator[list[dict]]:
    return chunks_of(iter_tables(stage_dir), size)


def chunks_of(tables: Iterable[tuple[str, pa.Table]], size: int) -> Iterator[list[dict]]:
    """Rows of `tables` (in order) in chunks of `size`: chunk k is rows [k*size, (k+1)*size)."""
    # Rows become Python dicts one chunk at a time: a 50,000-row upstream shard never exists as
    # 50,000 dicts at once, so memory does not grow with the upstream shard size.
    buf: list[dict] = []
    for _, table in tables:
        for batch in table.to_batches(max_chunksize=size):
            for row in batch.to_pylist():
                buf.append(row)
                if len(buf) >= size:
                    yield buf
                    buf = []
    if buf:
        yield buf


class Stopped(InfirError):
    """A stage stopped because another stage of a streamed build did (not the cause: that one is said)."""


#: Chunks an LLM stage has in flight at once. With one, each chunk drains its last wave of requests
#: before the next starts (at 1,000-row shards and 32 in flight, the endpoint idles for most of a
#: latency per shard); with two, the next chunk's requests fill the slots the last wave frees. The
#: shards are still written, tallied and handed on in chunk order, so the output does not change.
#: Shards smaller than `llm.concurrency` leave slots empty: keep them at least that large. (Sizing the
#: depth to the concurrency instead, a stage with small shards kept hundreds of requests in flight, and
#: against a service counting tokens otherwise than the client, the header pacing's reserve no longer
#: covered what was in flight: a third of the answers were 429s in bench_stream.)
IN_FLIGHT = 2


_NOT_YET = object()


class _Ahead:
    """The next chunk, taken (hashed, checked, its preparation started) on a thread of its own, one
    ahead: the chunk loop never waits on its upstream (a streamed stage's feed) while a finished
    chunk could be written."""

    def __init__(self, take: Callable):
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._take = take
        self._thread = threading.Thread(target=self._run, name="chunk-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._take()
                self._put(("item", item))
                if item is None:
                    return
        except BaseException as e:  # raised again in the chunk loop's thread
            self._put(("error", e))

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, wait: bool):
        """The next chunk (None at the end), or `_NOT_YET` when none is ready and `wait` is false."""
        try:
            kind, item = self._q.get(timeout=None) if wait else self._q.get_nowait()
        except queue.Empty:
            return _NOT_YET
        if kind == "error":
            raise item
        return item

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when the next chunk comes in."""
        with self._q.not_empty:  # the queue's own lock: `qsize()` would take it again
            if not self._q.queue:
                self._q.not_empty.wait(seconds)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Flow:
    """How a row stage's chunks come and go, when not as a lone stage reads a finished upstream
    (a streamed build, `stream.py`): its input tables as the upstream writes them, a callback per
    finished shard, the prepare thread shared by the build's stages, and the build's stop signal."""

    tables: Iterable[tuple[str, pa.Table]] | None = None
    on_written: Callable[[str, pa.Table], None] | None = None
    prepare_pool: Any = None  # has `submit(fn, *args) -> Future` (stream.PreparePool, per stage)
    stopped: Callable[[], str | None] | None = None
    on_watch: Callable[[StageWatch], None] | None = None


def run_chunks(ctx, stage, total_rows: int, flow: Flow | None = None) -> Counter:
    """Process every chunk of the upstream rows (or adopt its finished shard); returns counts of
    kept/new shards and the stage's own tally (`stage.tally`).

    Rows failed in this stage (not upstream: `stage.error_column`) are counted per shard, so that
    a rerun redoes exactly the shards holding them. `stage.prepare(ctx, rows)` (retrieval,
    building requests: no LLM) runs on one worker thread, ahead of the chunks in flight; its result
    is passed on as `stage.process(ctx, rows, prepared)`. All preparing happens on that one thread,
    in chunk order, so what it touches (retrieval indexes) is never used by two threads; a streamed
    build shares it between its stages for the same reason. An LLM stage keeps `IN_FLIGHT` chunks
    in flight on its client's own loop; every finished chunk is written, tallied and handed on in
    chunk order."""
    return _ChunkLoop(ctx, stage, flow or Flow()).run(total_rows)


class _ChunkLoop:
    """`run_chunks`, one stage's chunk loop."""

    def __init__(self, ctx, stage, flow: Flow):
        self.ctx, self.stage, self.flow = ctx, stage, flow
        self.out, self.client = ctx.out, ctx.client
        self.counts: Counter = Counter()
        self.tally: Counter = Counter()
        self.own_pool = flow.prepare_pool is None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"{stage.name}-prepare") if self.own_pool else flow.prepare_pool
        size = stage.shard_rows(ctx.cfg)
        self.depth = IN_FLIGHT if self.client is not None else 1
        self.workers = ThreadPoolExecutor(self.depth, thread_name_prefix=f"{stage.name}-chunk") if self.depth > 1 else None
        tables = flow.tables if flow.tables is not None else iter_tables(ctx.upstream_dir)
        self.chunks = enumerate(chunks_of(tables, size))
        self.pending: deque = deque()  # chunks started, in chunk order: (k, rows, digest, keep, future)
        self.source = _Ahead(self.take)

    def count_failed(self, table: pa.Table) -> int:
        return own_failures(table, self.stage.error_column)

    def take(self):
        """The next chunk, its input hash, whether its shard can be kept, and its preparation."""
        item = next(self.chunks, None)
        if item is None:
            return None
        k, rows = item
        digest = rows_hash(rows)
        keep = self.out.can_adopt(shard_name(k), digest)
        return k, rows, digest, keep, (None if keep else self.pool.submit(self.stage.prepare, self.ctx, rows))

    def process(self, rows, prepared, watch: StageWatch):
        chunk = watch.chunk_started()
        chunk_ctx = replace(self.ctx, on_result=watch.chunk_callback(chunk))
        return self.stage.process(chunk_ctx, rows, prepared.result()), chunk

    def run(self, total_rows: int) -> Counter:
        ctx, flow, interrupted = self.ctx, self.flow, False
        if self.workers is not None:
            self.client.start_loop()
        try:
            interval = getattr(getattr(ctx.cfg, "run", None), "progress_interval_s", 30.0)
            with StageWatch(self.stage.name, total_rows, self.client, interval, ctx.quiet,
                            ctx.options.get("build_rest_usd")) as watch:
                if flow.on_watch is not None:
                    flow.on_watch(watch)
                ended = False
                while not ended or self.pending:
                    # Start chunks up to the depth as they come (a kept shard waits in line for its turn:
                    # it costs nothing); wait for the next one only when nothing is in flight.
                    while not ended and len(self.pending) < self.depth:
                        item = self.source.get(wait=not self.pending)
                        if item is _NOT_YET:
                            break
                        if item is None:
                            ended = True
                            break
                        k, rows, digest, keep, prepared = item
                        fut = self.workers.submit(self.process, rows, prepared, watch) if self.workers and not keep else prepared
                        self.pending.append((k, rows, digest, keep, fut))
                    if not self.pending:
                        continue
                    # The oldest chunk is written as soon as it is done, not when the next one comes in
                    # (a streamed stage would hand its shards on in lockstep with its upstream's).
                    k, rows, digest, keep, fut = self.pending[0]
                    if not (keep or self.workers is None or fut.done() or ended or len(self.pending) >= self.depth):
                        self.source.wait(0.02)
                        continue
                    self.finish(*self.pending.popleft(), watch)
                    why = flow.stopped() if flow.stopped is not None else None
                    if why and (not ended or self.pending):
                        raise Stopped(f"{self.out.dir}: stopped: {why}; finished shards are kept: rerun to resume")
        except BaseException as e:
            interrupted = not isinstance(e, Exception)  # Ctrl-C: do not wait for the chunks in flight
            if interrupted and self.workers is not None:
                self.client.cancel_running()
            raise
        finally:
            self.close(interrupted)
        if self.stage.error_column is not None:
            self.counts["failed rows retried"] = self.out.retrying
        return self.stage.summary(ctx, self.tally, self.counts)

    def finish(self, k, rows, digest, keep, fut, watch: StageWatch) -> None:
        """Chunk k, in chunk order: adopt its finished shard, or wait for it and write it; hand it on."""
        out, name = self.out, shard_name(k)
        table = out.adopt_shard(name, input_hash=digest, count_failed=self.count_failed) if keep else None
        if table is not None:
            # As written, not as read back (Parquet names list items "element"): what on_shard
            # derives from it must be byte-identical to an uninterrupted run's.
            table = table.cast(self.ctx.schema)
            self.counts["shards resumed"] += 1
            watch.adopted(len(rows))
        else:
            if keep:  # a finished shard that cannot be read back: redo it here
                processed, chunk = self.process(rows, self.pool.submit(self.stage.prepare, self.ctx, rows), watch)
            elif self.workers is not None:
                processed, chunk = fut.result()
            else:
                processed, chunk = self.process(rows, fut, watch)
            _stop_if_client_stopped(self.client, out, watch)
            watch.chunk_done(len(rows), chunk)
            table = pa.Table.from_pylist(processed, schema=self.ctx.schema)
            out.write_shard(name, table, failed=self.count_failed(table), input_hash=digest)
            self.counts["shards written"] += 1
        self.stage.tally(self.ctx, self.tally, table)
        self.stage.on_shard(self.ctx, k, table)
        if self.flow.on_written is not None:
            self.flow.on_written(name, table)

    def close(self, interrupted: bool) -> None:
        self.source.stop()
        for *_, fut in self.pending:
            if fut is not None:
                fut.cancel()
        # A stop (budget, a fatal answer, another stage's error): the chunks in flight end first (they
        # send nothing more once the client has stopped; what they were answered is cached).
        if self.workers is not None:
            self.workers.shutdown(wait=not interrupted, cancel_futures=True)
            if not interrupted:
                self.client.stop_loop()
        if self.own_pool:
            self.pool.shutdown(wait=not interrupted, cancel_futures=True)


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
