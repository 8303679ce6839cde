"""Settings of the `source` stage (the `[source]` section): where the corpus is and how it is cleaned.

A leaf module: pydantic models only, nothing imported from the rest of infir, no side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from pipeline.validate import SECTION_CONFIG, InnerPath, SafeName, check_min_max


class _Section(BaseModel):
    model_config = SECTION_CONFIG


class ColumnMap(_Section):
    """Column names for jsonl / parquet / Hugging Face inputs."""

    id: str = "_id"
    text: str = "text"
    title: str | None = "title"
    qrel_query_id: str = "query-id"
    qrel_passage_id: str = "corpus-id"
    qrel_score: str | None = "score"


class HFSource(_Section):
    name: str
    config: str | None = None
    split: str = "train"


class SourceSettings(_Section):
    format: Literal["beir", "msmarco", "jsonl", "parquet", "hf"] = "beir"
    path: Path | None = Path("data/sample")
    name: str | None = None  # the `source` column; defaults to the input folder's name
    # File names inside `path` (beir/msmarco defaults apply when left empty).
    corpus_file: InnerPath | None = None
    queries_file: InnerPath | None = None
    qrels_file: InnerPath | None = None
    qrels_split: SafeName = "test"  # beir: qrels/<split>.tsv
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
