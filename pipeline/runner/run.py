"""Running one stage: what every stage shares, done once. The stage lock and the read holds on the
stages before it, skip / resume / redo / `--force` (`store.StageOutput`), the success marker, the
summary, the effective config saved after the stage, and progress. A stage only says what it computes."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from pipeline.errors import InfirError

from pipeline.config import to_toml
from pipeline.runner import chunks, llm
from pipeline.runner.executors import run_chunks
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.shape import Context, LLMStage, RowStage, Stage, StageResult
from pipeline.store import StageOutput, identity_hash, read_success
from pipeline.store.ids import sha256_file
from pipeline.store.lock import ReadLock, StageLock, refuse_if_read
from pipeline.store.shards import STREAMED, SUCCESS
from pipeline.store.verify_input import verify_upstream


def run_dir(cfg) -> Path:
    return Path(cfg.run.runs_dir) / cfg.run.name


def save_effective_config(cfg) -> Path:
    d = run_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "config.toml"
    path.write_text(to_toml(cfg))
    return path


def context(pipe: Pipeline, stage: Stage, cfg, *, force: bool = False, options: dict | None = None) -> Context:
    rd = run_dir(cfg)
    up = pipe.upstream_of(stage)
    coll = pipe.collection_stage()
    return Context(
        cfg=cfg, stage=stage, run_dir=rd, upstream_dir=rd / up.name if up else None,
        schema=pipe.schema_of(stage), collection_dir=rd / coll.name if coll else None,
        sections=pipe.sections(upto=stage),
        force=force, options=dict(options or {}),
    )


def run_stage(pipe: Pipeline, name: str, cfg, *, force: bool = False, options: dict | None = None) -> StageResult:
    """Run (or skip, or resume) one stage of the pipeline, then save the effective config."""
    stage = pipe[name]
    ctx = context(pipe, stage, cfg, force=force, options=options)
    # The lock first: what a stage reads to know its identity (an upstream release, say) may be
    # in the middle of being written by the process that holds it.
    earlier = pipe.stages[: pipe.stages.index(stage)]
    with StageLock(ctx.run_dir / stage.name), Reading(ctx.run_dir, earlier, stage.name) as reading:
        result = run_locked(ctx, stage, force, reading)
    save_effective_config(cfg)  # after the stage: a process refused by the stage lock must not overwrite it
    return result


class Reading:
    """Read holds on the folders of every stage before the running one (its upstream, the
    collection, what a release is made of), held while it runs: `infir <earlier stage> --force` in
    another process is refused instead of replacing the rows under it (`store.lock`). Taken after the
    stage's own lock, so a second process on this stage still meets "being written" first.

    With the holds it notes each earlier stage's success marker, by content: where a hold cannot
    reach (a process on another host, over a filesystem whose locks do not cross hosts), a stage
    rewritten meanwhile shows as a changed marker (`changed`), checked before `_SUCCESS.json`."""

    def __init__(self, run_dir: Path, earlier: list[Stage], reader: str):
        self.dirs = [Path(run_dir) / s.name for s in earlier]
        self.reader = reader
        self._holds = ExitStack()
        self.markers: dict[Path, str | None] = {}

    def __enter__(self) -> "Reading":
        try:
            for d in self.dirs:
                self._holds.enter_context(ReadLock(d, self.reader))
        except BaseException:
            self._holds.close()
            raise
        self.markers = {d: _marker(d) for d in self.dirs}
        return self

    def __exit__(self, *exc) -> None:
        self._holds.close()

    def changed(self) -> Path | None:
        """The first earlier stage whose marker is not what it was when the holds were taken."""
        return next((d for d in self.dirs if _marker(d) != self.markers[d]), None)


def _marker(stage_dir: Path) -> str | None:
    try:
        return sha256_file(stage_dir / SUCCESS)
    except OSError:  # not there (never run, or cleared by a rewrite in progress)
        return None


def run_locked(ctx: Context, stage: Stage, force: bool, reading: Reading, link=None) -> StageResult:
    """Run one stage whose lock (and read holds) the caller holds. `link`: the stage runs inside a
    streamed build (`stream.Link`): it hands each finished shard on, and, with `link.streaming`,
    reads its upstream's shards as they are written (its input fingerprint is then `STREAMED` until
    the upstream has finished, which it does first)."""
    streaming = link is not None and link.streaming
    stage.check(ctx)
    if isinstance(stage, LLMStage):
        llm.llm_prepare(ctx, stage)
    prompts = {ctx.prompt.name: ctx.prompt.sha} if ctx.prompt is not None else {}
    out = StageOutput(ctx.run_dir, stage.name, STREAMED if streaming else stage.input_fingerprint(ctx),
                      identity_hash(*stage.identity(ctx)), prompts,
                      force=force or stage.always_run, lock_held=True)
    if stage.redo_on_change and not out.force:
        previous = read_success(out.dir)
        out.force = previous is not None and not out.same_identity(previous)
    ctx.out = out
    with out:
        done = out.completed()
        if done:
            stage.on_skip(ctx, done)
            if link is not None:
                link.finished(done, earlier=True)
            return StageResult(stage.name, True, done)
        refuse_if_read(out.dir)  # before anything in the folder is cleared or written
        out.prepare()
        if link is not None:
            link.started()
        summary = _run(ctx, stage, link)
        if streaming:  # the upstream has finished (the feed ended): its real fingerprint
            out.input_fingerprint = stage.input_fingerprint(ctx)
        changed = reading.changed()
        if changed is not None:  # the holds' second line: never marked done on rows since replaced
            raise InfirError(
                f"{changed}: changed while `{stage.name}` was reading it; {stage.name} is not marked done "
                f"(what it wrote is from the old input): rerun `infir {stage.name} --force`"
            )
        success = out.finish(summary, rows=summary.get("rows") if not isinstance(stage, RowStage) else None)
    stage.print_summary(ctx, summary)
    if link is not None:
        link.finished(success)
    return StageResult(stage.name, False, success)


def _run(ctx: Context, stage: Stage, link=None) -> dict:
    streaming = link is not None and link.streaming
    if ctx.upstream_done() and not streaming:
        # The upstream's shards are what its marker says they are (re-hashed once per stage run):
        # a shard changed or lost since is one clear error, never silently different input.
        verify_upstream(ctx.upstream_dir, ctx.upstream_success())
    if not isinstance(stage, RowStage):
        return stage.run(ctx)
    total = link.estimate_rows if streaming else ctx.upstream_success()["rows"]
    batch = None
    if isinstance(stage, LLMStage):
        ctx.client = llm.make_client(ctx.cfg, ctx.run_dir, stage.name)
        if link is not None:
            link.clients.append(ctx.client)
    try:
        if isinstance(stage, LLMStage):
            batch = llm.prefetch_batch(ctx, stage)
        if link is not None:  # a streamed build runs here, in this process (stream.streams)
            summary = chunks.run_chunks(ctx, stage, total, link.flow())
        else:
            summary = run_chunks(ctx, stage, total)
        if ctx.client is not None:
            summary["llm"] = llm.llm_summary(ctx.client, batch)
    finally:
        if ctx.client is not None:
            ctx.client.close()
    return summary
