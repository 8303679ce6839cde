"""Settings of the `source` stage (the `[source]` section): where the corpus is and how it is cleaned.

A leaf module: pydantic models only, nothing imported from the rest of infir, no side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from pipeline.validate import SECTION_CONFIG, InnerPath, SafeName, check_min_max


class _Section(BaseModel):
    model_config = SECTION_CONFIG


class RecordColumns(_Section):
    """Column (or JSON field) names of one corpus or queries file."""

    id: str = "_id"
    text: str = "text"
    title: str | None = "title"  # corpus only; "" or absent column: no title


class QrelColumns(_Section):
    """Column names of a Parquet / JSONL / Hugging Face qrels table (text qrels are positional)."""

    query_id: str = "query-id"
    passage_id: str = "corpus-id"
    score: str | None = "score"  # None or "": every listed pair is relevant (score 1)


_FLAT_RECORD = ("id", "text", "title")
_FLAT_QRELS = {"qrel_query_id": "query_id", "qrel_passage_id": "passage_id", "qrel_score": "score"}


class ColumnMap(_Section):
    """`[source.columns.corpus]`, `[source.columns.queries]`, `[source.columns.qrels]`: one map per
    file, since a corpus (`doc_id, body`) and its queries (`query_id, question`) rarely share names.
    The flat keys of earlier configs (`columns.id`, `columns.qrel_score`, ...) are still read: `id`,
    `text`, `title` then apply to both corpus and queries."""

    corpus: RecordColumns = RecordColumns()
    queries: RecordColumns = RecordColumns()
    qrels: QrelColumns = QrelColumns()

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not (set(data) & (set(_FLAT_RECORD) | set(_FLAT_QRELS))):
            return data
        data = dict(data)
        flat = {k: data.pop(k) for k in _FLAT_RECORD if k in data}
        for part in ("corpus", "queries"):
            data[part] = {**flat, **dict(data.get(part) or {})}
        qrels = {new: data.pop(old) for old, new in _FLAT_QRELS.items() if old in data}
        if qrels:
            data["qrels"] = {**qrels, **dict(data.get("qrels") or {})}
        return data


class HFSource(_Section):
    """A Hugging Face dataset: a Hub name (`org/name`), a local dataset folder, or a folder written by
    `Dataset.save_to_disk` (read with `load_from_disk`)."""

    name: str
    config: str | None = None
    split: str = "train"
    # A Hub commit sha, tag or branch. Pin it: the run's config and the source summary record it,
    # and an unpinned Hub dataset is read at whatever its main branch is that day (with a warning).
    revision: str | None = None
    # Stream rows (no full download or Arrow cache first): the collection may be larger than the disk
    # cache. Off only for datasets whose loading script cannot stream.
    streaming: bool = True


class SourceSettings(_Section):
    format: Literal["beir", "msmarco", "jsonl", "parquet", "hf"] = "beir"
    path: Path | None = Path("data/sample")
    name: str | None = None  # the `source` column; defaults to the input folder's name
    # File names inside `path` (each format's defaults apply when left empty; see sources/readers.py).
    # A Parquet corpus may also be a folder of Parquet files.
    corpus_file: InnerPath | None = None
    queries_file: InnerPath | None = None
    qrels_file: InnerPath | None = None
    # BEIR: qrels/<split>.tsv (default "test"). MS MARCO: queries.<split>.tsv and qrels.<split>.tsv
    # ("dev" or "train"; when empty, whichever of the two is present).
    qrels_split: SafeName | None = None
    columns: ColumnMap = ColumnMap()
    hf_corpus: HFSource | None = None
    hf_queries: HFSource | None = None
    hf_qrels: HFSource | None = None
    sample_queries: int = Field(0, ge=0, description="0 keeps every query")
    seed: int | None = None  # None: run.seed
    min_query_words: int = Field(1, ge=1)
    max_query_words: int = Field(40, ge=1)
    min_passage_words: int = Field(5, ge=1)
    max_passage_words: int = Field(400, ge=1)
    # The longest passage that may enter a prompt (a collection passage shown to the poison prompt,
    # a positive): longer ones are cut to this many words, or quarantined.
    prompt_passage_words: int = Field(2000, ge=1)
    long_passages: Literal["truncate", "quarantine"] = "truncate"
    min_relevance: int = 1
    dedup_threshold: float = Field(95.0, ge=0, le=100)
    decontaminate: list[Path] = []
    decontam_threshold: float = Field(95.0, ge=0, le=100)
    shard_rows: int = Field(50_000, ge=1)
    collection_shard_rows: int = Field(200_000, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> "SourceSettings":
        check_min_max(self.min_query_words, self.max_query_words, "min_query_words", "max_query_words")
        check_min_max(self.min_passage_words, self.max_passage_words, "min_passage_words", "max_passage_words")
        return self
