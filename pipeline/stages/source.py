"""`infir source`: queries, passages and qrels in; one row per (query, judged positive) out.

The collection is streamed once: every passage is written to `source/collection/` (later stages
mine negatives there) and only the judged positives are held in memory (`pipeline.sources.build`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InfirError
from pipeline.runner.shape import Context, Option, Stage
from pipeline.sources.build import build_rows, no_rows_message
from pipeline.sources.quarantine import Quarantine
from pipeline.sources.readers import SourceReader
from pipeline.store import file_fingerprint, identity_hash


class Source(Stage):
    name = "source"
    section = "source"
    adds = ("id", "source", "query_id", "query_positive", "passage_id", "document_positive", "positive_ids")
    provides_collection = True
    make_help = "stage 1: queries, passages, qrels"
    doc = """Read queries, passages and qrels; write one row per (query, judged positive passage).

    Input: BEIR (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), MS MARCO tsv (collection.tsv,
    queries.tsv, qrels), jsonl or Parquet with a column map, or a Hugging Face dataset.
    Output: runs/<run>/source/ (rows, the whole collection under collection/, quarantine.parquet
    with every dropped line and its reason, _SUCCESS.json). A finished stage is skipped on rerun.
    """
    options = (
        Option("--input", "input", Path, "Input folder (source.path).", key="source.path"),
        Option("--format", "format", str, "beir | msmarco | jsonl | parquet | hf.", key="source.format"),
        Option("--sample", "sample", int, "Number of queries to sample (0 = all).", key="source.sample_queries"),
        Option("--seed", "seed", int, "Sampling seed.", key="source.seed"),
        Option("--decontaminate", "decontaminate", Path,
               "Evaluation topic file to decontaminate against (repeatable).", key="source.decontaminate", multiple=True),
    )

    def _effective(self, ctx: Context):
        # The effective seed belongs to the config identity; the run's name does not.
        s = ctx.settings
        return s.model_copy(update={"seed": s.seed if s.seed is not None else ctx.cfg.run.seed})

    def identity(self, ctx: Context) -> tuple:
        return (self._effective(ctx),)

    def input_fingerprint(self, ctx: Context) -> str:
        s = ctx.settings
        for p in s.decontaminate:
            if not Path(p).exists():
                raise InfirError(f"{p}: evaluation topic file not found (source.decontaminate)")
            if not Path(p).is_file():  # a folder, or a FIFO that would block the read
                raise InfirError(f"{p}: not a regular file (source.decontaminate)")
        reader = SourceReader(s, Quarantine(root=s.path))
        inputs = reader.input_files() + [Path(p) for p in s.decontaminate]
        return file_fingerprint(inputs) if inputs else identity_hash(self._effective(ctx))

    def run(self, ctx: Context) -> dict:
        s = self._effective(ctx)
        q = Quarantine(root=s.path)
        summary = build_rows(s, SourceReader(s, q), q, ctx.out, ctx.schema)
        ctx.out.write_shard("quarantine.parquet", q.table())
        if not summary["rows"]:  # an empty source is an error, not a stage that looks finished
            raise InfirError(no_rows_message(q, ctx.out.dir / "quarantine.parquet"))
        return summary

    def summary_rows(self, summary: dict) -> list[tuple[str, object]]:
        rows = [(k, v) for k, v in summary.items() if k != "quarantined"]
        return rows + [(f"dropped: {k}", v) for k, v in summary["quarantined"].items()]


STAGE = Source()
