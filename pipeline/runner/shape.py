"""The stage shape: a name, its config section, the columns it adds, its error column, and either
`run(ctx)` (a plain stage) or the row hooks of a chunked stage (`RowStage`) / an LLM stage
(`LLMStage`: `tasks(ctx, rows)` builds the requests, `to_row(ctx, row, result, prepared)` turns
an answer into the row's new columns). A stage never names another stage: its upstream is
whatever precedes it in the pipeline declaration, handed to it through `Context`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.columns import error_column, fields, usage_column
from pipeline.errors import InfirError
from pipeline.progress import console, print_summary
from pipeline.store import read_success, require_stage, stage_fingerprint


@dataclass(frozen=True)
class Option:
    """A CLI flag of a stage's subcommand: `key` (a dotted config key) receives its value, or, with
    no key, the stage's run gets it as `ctx.options[dest]`."""

    flag: str
    dest: str
    type: Any = str
    help: str = ""
    key: str | None = None
    is_flag: bool = False
    multiple: bool = False
    secondary: str | None = None  # "--no-x" for a boolean pair


class Stage:
    """A plain stage: `run(ctx)` writes its output through `ctx` and returns its summary."""

    name: str = ""
    section: str | None = None  # its config section, if it has settings
    adds: tuple[str, ...] = ()  # the columns it adds to its upstream's rows (types: pipeline.columns)
    doc: str = ""  # help of its CLI subcommand
    make_help: str = ""  # one line for `make help`
    options: tuple[Option, ...] = ()
    #: The stage writes the run's passage collection (`<stage>/collection/`), which retrieval reads.
    provides_collection: bool = False
    #: Run every time (never skipped as complete): its own output decides whether it is a no-op.
    always_run: bool = False
    #: Changed settings or input redo the stage (instead of refusing, as stages whose output is
    #: resumed shard by shard do: mixing old and new shards must never happen silently).
    redo_on_change: bool = False

    @property
    def error_column(self) -> str | None:
        return error_column(self.name) if error_column(self.name) in self.adds else None

    def standalone(self, options: dict) -> bool:
        """A CLI action of the stage that does not run it (e.g. `write --verify DIR`); True if done."""
        return False

    def settings(self, cfg) -> Any:
        return getattr(cfg, self.section) if self.section else None

    def check(self, ctx: "Context") -> None:
        """Refuse settings this stage cannot run with (one clear error), before it reads anything."""

    def identity(self, ctx: "Context") -> tuple:
        """What, besides its input, decides this stage's output (its config section by default)."""
        return (self.settings(ctx.cfg),)

    def input_fingerprint(self, ctx: "Context") -> str:
        """What this stage reads, by content: its upstream's shards by default."""
        return stage_fingerprint(ctx.upstream_success())

    def on_skip(self, ctx: "Context", success: dict) -> None:
        console.print(f"[green]{self.name}[/]: already complete ({success['rows']:,} rows); nothing to do (--force redoes it)")

    def print_summary(self, ctx: "Context", summary: dict) -> None:
        rows = self.summary_rows(summary)
        rows += list((summary.get("llm") or {}).items())
        print_summary(self.name, rows)

    def run(self, ctx: "Context") -> dict:  # pragma: no cover - every plain stage defines it
        raise NotImplementedError

    def summary_rows(self, summary: dict) -> list[tuple[str, object]]:
        return [(k, v) for k, v in summary.items() if not isinstance(v, dict)]

    def stand_in(self, row: dict) -> dict:
        """A row as this stage would output it, for a dry run before the stage has run: its own
        columns empty (LLM stages put texts of typical length)."""
        return {**row, **{c: ([] if pa.types.is_list(t.type) else None) for c, t in zip(self.adds, fields(self.adds))}}


class RowStage(Stage):
    """A stage that maps its upstream's rows chunk by chunk (the runner streams, resumes and
    records each shard; see `chunks.run_chunks`)."""

    shard_rows_key: str = "shard_rows"

    def shard_rows(self, cfg) -> int:
        return getattr(self.settings(cfg), self.shard_rows_key)

    def prepare(self, ctx: "Context", rows: list[dict]) -> Any:
        """The chunk's work that needs no LLM (retrieval, building requests): one chunk ahead."""
        return None

    def process(self, ctx: "Context", rows: list[dict], prepared: Any) -> list[dict]:
        raise NotImplementedError

    def tally(self, ctx: "Context", counts: Counter, table: pa.Table) -> None:
        """Count what a finished (or resumed) shard holds, for the summary."""

    def on_shard(self, ctx: "Context", index: int, table: pa.Table) -> None:
        """Extra outputs derived from a finished shard (e.g. accepted/ and rejected/ tables)."""

    def summary(self, ctx: "Context", counts: Counter, shards: Counter) -> dict:
        return {"rows": counts["rows"], **{k: v for k, v in counts.items() if k != "rows"}, **shards}


class LLMStage(RowStage):
    """A row stage that asks an LLM once per row: `tasks` builds the requests (the dry run and
    batch mode reuse it, so they price and submit exactly what is sent), `to_row` reads an answer."""

    prompt_key: str = "prompt"

    def model(self, cfg) -> str:
        return self.settings(cfg).model

    def models(self, cfg) -> list[tuple[str, str]]:
        """(config key, effective model) of every model the stage sends requests to: the runner
        checks their prices (and says what it assumes of unknown ones) before any request. A stage
        with more than one kind of request (the judge cascade) adds its other models."""
        from pipeline.runner.llm import effective_model

        return [(f"{self.section}.model", effective_model(cfg, self.model(cfg)))]

    def params(self, cfg, model: str) -> dict:
        s = self.settings(cfg)
        from pipeline.runner.llm import params_for

        return params_for(model, temperature=s.temperature, max_tokens=s.max_tokens)

    def tasks(self, ctx: "Context", rows: list[dict]) -> tuple[list, Any]:
        """(requests for the rows that need one, anything `to_row` needs besides the answer)."""
        raise NotImplementedError

    def to_row(self, ctx: "Context", row: dict, result, extra: Any) -> dict:
        """The columns this stage adds to `row`, given its LLM result (None: no request was sent)."""
        raise NotImplementedError

    def prepare(self, ctx: "Context", rows: list[dict]) -> Any:
        return self.tasks(ctx, rows)

    def process(self, ctx: "Context", rows: list[dict], prepared: Any) -> list[dict]:
        tasks, extra = prepared
        results = {res.key_id: res for res in ctx.client.run(tasks, on_result=ctx.on_result)}
        return [{**r, **self.to_row(ctx, r, results.get(r["id"]), extra)} for r in rows]

    @property
    def usage_column(self) -> str:
        return usage_column(self.name)

    def identity(self, ctx: "Context") -> tuple:
        return (self.settings(ctx.cfg), ctx.cfg.llm.backend, ctx.model)


@dataclass
class Context:
    """What a running stage is given: the run, its settings, its upstream's output, the LLM."""

    cfg: Any
    stage: Stage
    run_dir: Path
    upstream_dir: Path | None
    schema: pa.Schema
    collection_dir: Path | None = None
    sections: list[str] = field(default_factory=list)  # config sections of the stages up to this one
    force: bool = False
    options: dict = field(default_factory=dict)
    out: Any = None  # the StageOutput being written
    client: Any = None  # the LLM client (LLM stages)
    prompt: Any = None
    model: str | None = None
    params: dict = field(default_factory=dict)
    #: The dry run prices stand-in rows (upstream not run yet): checks that would trip on them are off.
    stand_ins: bool = False
    quiet: bool = False  # no periodic progress lines (`-q`)
    on_result: Any = None  # called with each LLM result of the chunk in flight (per-row progress)
    cache: dict = field(default_factory=dict)  # per-run memo for a stage's own use

    @property
    def settings(self) -> Any:
        return self.stage.settings(self.cfg)

    def upstream_success(self) -> dict:
        if self.upstream_dir is None:
            raise InfirError(f"stage '{self.stage.name}' has no upstream")
        return require_stage(self.run_dir, self.upstream_dir.name)

    def upstream_done(self) -> bool:
        return self.upstream_dir is not None and read_success(self.upstream_dir) is not None

    def collection(self) -> tuple[list[Path], str, Path]:
        """The run's passage collection: shard paths, a content fingerprint, the index folder."""
        import hashlib

        from pipeline.store.ids import canonical_json

        if self.collection_dir is None:
            raise InfirError("no stage of this pipeline provides a passage collection")
        success = require_stage(self.run_dir, self.collection_dir.name)
        shas = sorted(s["sha256"] for s in success["shards"] if s["name"].startswith("collection/"))
        fingerprint = hashlib.sha256(canonical_json(shas).encode()).hexdigest()[:16]
        paths = sorted((self.collection_dir / "collection").glob("part-*.parquet"))
        if not paths:
            raise InfirError(f"{self.collection_dir / 'collection'}: no collection shards; run `infir {self.collection_dir.name}` first")
        return paths, fingerprint, self.run_dir / "index"




@dataclass
class StageResult:
    stage: str
    skipped: bool
    success: dict
