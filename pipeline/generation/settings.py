"""Settings of the LLM stages (`[generate]`, `[mine]`, `[verify]`): model, prompt, sampling, shards.

A leaf module: pydantic models only (plus the retrieval settings `mine` embeds), no side effects."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator

from pipeline.llm.families import effort_problem, model_problem
from pipeline.retrieval.types import MiningSettings
from pipeline.validate import SECTION_CONFIG, SafeName


def _servable(model: str) -> str:
    """A model every infir request can be sent to (o1-mini takes no system message and no
    json_schema: refused here, at load, rather than answered 400 row by row)."""
    problem = model_problem(model)
    if problem:
        raise ValueError(problem)
    return model


# The model of an LLM stage: refused at load when the service could serve none of its requests.
ModelName = Annotated[str, AfterValidator(_servable)]


class _Section(BaseModel):
    model_config = SECTION_CONFIG


class GenerateSettings(_Section):
    model: ModelName = "gpt-4o-mini"
    temperature: float = Field(0.7, ge=0, le=2)  # the API's range: outside it every request is a 400
    max_tokens: int = Field(300, ge=1)
    prompt: SafeName = "generate_instruction"  # prompts_dir/<prompt>.md
    # Hand the retriever's near misses to the prompt so that I+ excludes them.
    use_near_misses: bool = True
    near_misses: int = Field(8, ge=0, le=50)
    shard_rows: int = Field(1000, ge=1)


class MineSettings(_Section):
    model: ModelName = "gpt-4o-mini"
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(900, ge=1)
    prompt: SafeName = "poison"
    # Retrieved passages shown to the poison prompt (style examples; offline: HN sources).
    candidates: int = Field(8, ge=0, le=50)
    shard_rows: int = Field(1000, ge=1)
    retrieval: MiningSettings = MiningSettings(num_negatives=8)


class VerifySettings(_Section):
    model: ModelName = "o3-mini"
    # The values each model family accepts differ (o-series: low/medium/high; gpt-5: also minimal;
    # pipeline/llm/families.py): checked against `model` below, at load, before any request.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] = "medium"
    max_completion_tokens: int = Field(4000, ge=1)
    prompt: SafeName = "judge"
    shard_rows: int = Field(1000, ge=1)
    # The cascade (pipeline/generation/cascade.py): a cheaper first judge answers every check first;
    # a row it fails on any check with confidence at or above the threshold is rejected by it, the
    # others go to the judge above. Off until calibrated (`infir calibrate-judge`).
    cascade: bool = False
    first_model: ModelName = "gpt-4o-mini"
    first_prompt: str = "judge_first"
    first_max_tokens: int = Field(1200, ge=1)
    # None: the threshold `infir calibrate-judge` recommended for this run (its calibration file).
    cascade_threshold: float | None = Field(None, ge=0, le=1)
    # Share of rows expected to reach the reasoning judge, for the dry run before calibration.
    cascade_expected_survival: float = Field(0.6, ge=0, le=1)
    # calibrate-judge: sample size, seed, and the largest share of good rows the first judge may reject.
    calibration_rows: int = Field(200, ge=1)
    calibration_seed: int = 13
    calibration_max_false_reject: float = Field(0.05, ge=0, le=1)

    @field_validator("reasoning_effort")
    @classmethod
    def _effort_for_model(cls, effort: str, info: ValidationInfo) -> str:
        # `model` is declared first, so it is validated (and present) by now unless it failed.
        model = info.data.get("model")
        problem = effort_problem(model, effort) if model else None
        if problem:
            raise ValueError(f"{problem} (the service would answer every judge request 400)")
        return effort


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
