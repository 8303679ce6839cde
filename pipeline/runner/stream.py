"""`infir build`, streamed: the row stages (generate, mine, filter, verify) run at once, each in its own
thread, and chunk k of a stage enters the next stage as soon as the stage has written its shard.

At scale a run is bound by the provider's per-model rate limits: generate and mine ask gpt-4o-mini,
verify o3-mini. Run one after another, only one model's limit is at work at any moment and the wall is
the sum of the stages' bounds; streamed, the limits work at once and the wall approaches the largest.
(datatrove runs a shard through its steps as a chain of generators; here each stage keeps its own
concurrency, its client and its shards, and a feed of finished shards links it to the next stage.)

The output does not change. A stage's chunks are its upstream's rows in order, cut at the same
boundaries as when it reads the finished upstream (`chunks.chunks_of`); a shard is kept on resume only
by the hash of its input rows; and while the upstream is still being written a stage records the input
fingerprint `STREAMED` in its state, replaced by the upstream's real fingerprint when it finishes
(the upstream finishes first). So each stage's shards, its `_SUCCESS.json` (but `seconds`) and the
release are the bytes of a stage-by-stage build, and a kill at any point resumes to the same bytes.

A stage streams only when its upstream is being written by this build and it has no finished output
of its own (a first build, or a resume after an interruption). A stage that finished earlier waits for
its upstream to finish and then runs as in a stage-by-stage build (a rerun that retries failed rows
keeps that path's rules for what is redone). The locks: every streamed stage's own lock and the read
holds on the stages before them are taken here, for the whole group, before any stage starts.

Not streamed: batch mode (each stage's requests go through the Batch API as one set of waves) and the
Ray executor (it already runs every shard of a stage at once across the cluster; see docs/cluster.md).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from pipeline.progress import shared_bars
from pipeline.runner.chunks import Flow, Stopped
from pipeline.runner import llm
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.run import Reading, context, run_dir, run_locked, save_effective_config
from pipeline.runner.shape import RowStage, Stage, StageResult
from pipeline.store import read_shard, read_success
from pipeline.store.lock import StageLock

_WAIT_S = 0.5  # how often a waiting stage looks at the build's stop signal


def streams(cfg) -> bool:
    """Whether `infir build` streams its row stages (`run.stream`, `--no-stream`)."""
    return bool(cfg.run.stream) and cfg.run.executor == "local" and cfg.llm.mode != "batch"


def stream_groups(stages: list[Stage]) -> list[list[Stage]]:
    """The stages in order, consecutive row stages grouped (each group is streamed; others alone)."""
    groups: list[list[Stage]] = []
    for s in stages:
        if isinstance(s, RowStage) and groups and isinstance(groups[-1][-1], RowStage):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


class ShardFeed:
    """The shards one stage has finished, in chunk order, for the stage after it; and the stage's
    fate: "complete" (finished earlier: nothing to stream), "running", "done", or "failed"."""

    def __init__(self, stage_dir: Path):
        self.dir = Path(stage_dir)
        self._names: list[str] = []
        self._cond = threading.Condition()
        self.state: str | None = None
        self.rows: int | None = None  # its output rows, once finished
        self._on_rows: list = []

    def _set(self, state: str, rows: int | None = None) -> None:
        with self._cond:
            self.state = state
            if rows is not None:
                self.rows = rows
            self._cond.notify_all()
        if rows is not None:
            for fn in self._on_rows:
                fn(rows)

    def running(self) -> None:
        self._set("running")

    def finished(self, success: dict, earlier: bool) -> None:
        self._set("complete" if earlier else "done", int(success.get("rows", 0)))

    def failed(self) -> None:
        self._set("failed")

    def publish(self, name: str, _table: pa.Table) -> None:
        with self._cond:
            self._names.append(name)
            self._cond.notify_all()

    def on_rows(self, fn) -> None:
        """Call `fn(rows)` when the stage's output row count is known (now, if it is)."""
        self._on_rows.append(fn)
        if self.rows is not None:
            fn(self.rows)

    def wait(self, until: set[str], stop: threading.Event) -> str:
        """Block until the stage's state is one of `until` (or failed, or the build stops)."""
        with self._cond:
            while self.state not in until and self.state != "failed":
                if stop.is_set():
                    raise Stopped(f"{self.dir}: the build stopped")
                self._cond.wait(_WAIT_S)
            return self.state

    def tables(self, stop: threading.Event) -> Iterator[tuple[str, pa.Table]]:
        """The stage's shards as it writes them, read back from disk as a finished stage's would be
        (`store.iter_tables`); ends when the stage is done, raises if it failed or the build stops."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self._names) and self.state == "running" and not stop.is_set():
                    self._cond.wait(_WAIT_S)
                name = self._names[i] if i < len(self._names) else None
                state = self.state
            if name is not None:
                i += 1
                yield name, read_shard(self.dir / name, then="rerun the build")
            elif state == "done":
                return
            else:
                raise Stopped(f"{self.dir}: {'the build stopped' if stop.is_set() else 'stopped before it finished'}")


class PreparePool:
    """The one thread on which every streamed stage prepares its chunks (retrieval indexes are opened
    once per process and never used by two threads), serving the later stages first: their chunks
    are nearer to done, and a judge's chunk waiting behind mine's retrieval would leave the judge's
    model idle while the pipeline fills."""

    def __init__(self):
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._n = itertools.count()
        self._thread = threading.Thread(target=self._work, name="prepare", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            _, _, job = self._q.get()
            if job is None:
                return
            fut, fn, args = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # handed to whoever waits on the chunk
                    fut.set_exception(e)

    def for_stage(self, rank: int) -> "_StagePrepare":
        return _StagePrepare(self, rank)

    def submit(self, rank: int, fn, *args) -> Future:
        fut: Future = Future()
        self._q.put((-rank, next(self._n), (fut, fn, args)))
        return fut

    def shutdown(self) -> None:
        self._q.put((float("inf"), next(self._n), None))


class _StagePrepare:
    """A stage's view of the `PreparePool` (what `chunks.run_chunks` calls `prepare_pool`)."""

    def __init__(self, pool: PreparePool, rank: int):
        self._pool, self._rank = pool, rank

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(self._rank, fn, *args)


class Link:
    """What `run.run_locked` needs to run one stage inside a streamed group: whether its input is the
    upstream being written now, and the `Flow` of its chunks."""

    def __init__(self, feed_in: ShardFeed | None, feed_out: ShardFeed, pool: _StagePrepare,
                 stop: threading.Event, estimate_rows: int, clients: list, projection=None):
        self.feed_in, self.feed_out, self.pool, self.stop = feed_in, feed_out, pool, stop
        self.clients = clients  # every stage's LLM client (Ctrl-C cancels what they have in flight)
        self.projection = projection
        self.streaming = False
        self.estimate_rows = estimate_rows  # the rows a streamed stage expects until its upstream ends

    def flow(self) -> Flow:
        def on_watch(watch) -> None:
            if self.projection is not None:
                self.projection.watch(watch)
            if self.streaming and self.feed_in is not None:
                self.feed_in.on_rows(watch.set_total)

        return Flow(
            tables=self.feed_in.tables(self.stop) if self.streaming else None,
            on_written=self.feed_out.publish, prepare_pool=self.pool,
            stopped=lambda: "another stage of the build stopped" if self.stop.is_set() else None,
            on_watch=on_watch,
        )

    def started(self) -> None:
        self.feed_out.running()

    def finished(self, success: dict, earlier: bool = False) -> None:
        self.feed_out.finished(success, earlier)


class BuildProjection:
    """The build's projected total in every streamed stage's progress line: what the run spent outside
    these stages, each running stage's own projection (its estimate until it has one), and the
    estimate of the LLM stages after them. (Stage by stage, each line adds the stages after it.)"""

    def __init__(self, cfg, estimates: dict[str, float], later_usd: float):
        ledger = llm.ledger(cfg, run_dir(cfg))
        try:
            self.base = ledger.spent() - sum(ledger.spent(label=n) for n in estimates)
            self.spent_before = {n: ledger.spent(label=n) for n in estimates}
        finally:
            ledger.close()
        self.estimates, self.later_usd = dict(estimates), later_usd
        self.watches: dict[str, object] = {}

    def watch(self, watch) -> None:
        self.watches[watch.name] = watch
        watch.build = self

    def projected(self) -> float:
        total = self.base + self.later_usd
        for name, est in self.estimates.items():
            w = self.watches.get(name)
            mine = w.figures(with_run=False, with_build=False)["projected_stage_usd"] if w is not None else None
            total += mine if mine is not None else self.spent_before[name] + est
        return total


def run_streamed(pipe: Pipeline, group: list[Stage], cfg, force: bool,
                 projection: BuildProjection | None = None) -> list[StageResult]:
    """Run the row stages of `group` (consecutive in the pipeline) at once, streamed."""
    rd = run_dir(cfg)
    first = pipe.stages.index(group[0])
    earlier = pipe.stages[:first]
    stop = threading.Event()
    feeds = [ShardFeed(rd / s.name) for s in group]
    results: list[StageResult | None] = [None] * len(group)
    errors: list[tuple[float, int, BaseException]] = []
    upstream = read_success(rd / earlier[-1].name) if earlier else None
    estimate = int((upstream or {}).get("rows", 0))
    pool = PreparePool()
    clients: list = []

    def work(i: int, stage: Stage) -> None:
        link = Link(feeds[i - 1] if i else None, feeds[i], pool.for_stage(i), stop, estimate, clients, projection)
        try:
            ctx = context(pipe, stage, cfg, force=force)
            if link.feed_in is not None:
                mode = link.feed_in.wait({"complete", "running", "done"}, stop)
                if mode == "failed":
                    raise Stopped(f"{link.feed_in.dir}: stopped before it finished")
                if mode == "running":
                    if force or read_success(rd / stage.name) is None:
                        link.streaming = True
                    elif link.feed_in.wait({"done"}, stop) != "done":
                        raise Stopped(f"{link.feed_in.dir}: stopped before it finished")
            results[i] = run_locked(ctx, stage, force, reading, link)
        except BaseException as e:  # every stage's thread ends; the first cause is raised below
            errors.append((time.monotonic(), i, e))
            stop.set()
            feeds[i].failed()

    with ExitStack() as held:
        for s in group:  # the whole group's locks first: nothing starts unless every stage can
            held.enter_context(StageLock(rd / s.name))
        reading = held.enter_context(Reading(rd, earlier, group[0].name))
        held.enter_context(shared_bars())
        threads = [threading.Thread(target=work, args=(i, s), name=f"stage-{s.name}", daemon=True)
                   for i, s in enumerate(group)]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except BaseException:  # Ctrl-C: stop every stage now (what is written and cached is kept)
            stop.set()
            for c in clients:
                c.cancel_running()
            raise
        finally:
            pool.shutdown()
    save_effective_config(cfg)
    if errors:
        errors.sort(key=lambda x: (x[0], x[1]))
        causes = [e for _, _, e in errors if not isinstance(e, Stopped)]
        raise (causes or [errors[0][2]])[0]
    return [r for r in results if r is not None]
