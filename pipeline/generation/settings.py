"""Settings of the LLM stages (`[generate]`, `[mine]`, `[verify]`): model, prompt, sampling, shards.

A leaf module: pydantic models only (plus the retrieval settings `mine` embeds), no side effects."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipeline.retrieval.types import MiningSettings
from pipeline.validate import SECTION_CONFIG, SafeName


class _Section(BaseModel):
    model_config = SECTION_CONFIG


class GenerateSettings(_Section):
    model: str = "gpt-4o-mini"
    temperature: float = Field(0.7, ge=0, le=2)  # the API's range: outside it every request is a 400
    max_tokens: int = Field(300, ge=1)
    prompt: SafeName = "generate_instruction"  # prompts_dir/<prompt>.md
    # Hand the retriever's near misses to the prompt so that I+ excludes them.
    use_near_misses: bool = True
    near_misses: int = Field(8, ge=0, le=50)
    shard_rows: int = Field(1000, ge=1)


class MineSettings(_Section):
    model: str = "gpt-4o-mini"
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(900, ge=1)
    prompt: SafeName = "poison"
    # Retrieved passages shown to the poison prompt (style examples; offline: HN sources).
    candidates: int = Field(8, ge=0, le=50)
    shard_rows: int = Field(1000, ge=1)
    retrieval: MiningSettings = MiningSettings(num_negatives=8)


class VerifySettings(_Section):
    model: str = "o3-mini"
    reasoning_effort: Literal["minimal", "low", "medium", "high"] = "medium"
    max_completion_tokens: int = Field(4000, ge=1)
    prompt: SafeName = "judge"
    shard_rows: int = Field(1000, ge=1)


class FilterSettings(_Section):
    """The deterministic filters (`[filter]`), run before any judge request. Ratios are of word counts."""

    shard_rows: int = Field(1000, ge=1)
    max_instruction_words: int = Field(80, ge=1)
    max_query_words: int = Field(40, ge=1)
    max_passage_words: int = Field(400, ge=1)
    # rapidfuzz ratios (0-100) over normalised text
    near_equal_threshold: float = Field(95.0, ge=0, le=100, description="I- this close to I+ is a copy")
    near_copy_threshold: float = Field(90.0, ge=0, le=100, description="HN this close to P+ (or HN1 to HN2) is a copy")
    answer_copy_threshold: float = Field(90.0, ge=0, le=100, description="I+ quoting P+ this closely gives the answer away")
    # Minimal edits: words changed (word-level edit distance) at most this share of I+ / Q+ (and at
    # least `min_edit_allowance` words), and the length kept within the ratio.
    max_instruction_edit_fraction: float = Field(0.5, gt=0)
    max_query_edit_fraction: float = Field(0.6, gt=0)
    min_edit_allowance: int = Field(2, ge=1)
    instruction_length_ratio: tuple[float, float] = (0.5, 2.0)
    query_length_ratio: tuple[float, float] = (0.5, 2.0)
    # Hard negatives far shorter or longer than P+ (a stub, a dump) teach length, not relevance.
    negative_length_ratio: tuple[float, float] = (0.05, 20.0)
    # I+ sharing this many consecutive words with P+ leaks its answer.
    leak_ngram_words: int = Field(8, ge=2)
    # Filter names to switch off (e.g. ["hard_negative_document_1_length_ratio"]).
    disabled: list[str] = []
