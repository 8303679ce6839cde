"""The output model of each prompt: the JSON schema sent as `response_format`, and the parser."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

CHECKS = (
    "positive_fits",
    "positive_fails_instruction_negative",
    "positive_fails_query_negative",
    "hn1_fits",
    "hn2_fits",
    "hn1_fails_positive",
    "hn2_fails_positive",
    "instruction_negative_plausible",
    "query_negative_plausible",
)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("empty (only whitespace)")
    return text


# An answer whose text is blank is an invalid answer (a repair request, and a rerun asks again past
# the cache), not a row that a later stage fails for good. A validator, not `min_length`: the JSON
# schema sent (so every cache key) stays the same.
_Text = Annotated[str, AfterValidator(_not_blank)]


class GeneratedInstruction(_Out):
    instruction: _Text = Field(description="the positive instruction I+")
    kind: Literal["aspect", "constraint", "format", "exclusion"]


class PoisonedPair(_Out):
    instruction_negative: str
    hard_negative_document_1: str
    query_negative: str
    hard_negative_document_2: str


class Verdict(_Out):
    passed: bool
    reason: str


class JudgeVerdicts(_Out):
    positive_fits: Verdict
    positive_fails_instruction_negative: Verdict
    positive_fails_query_negative: Verdict
    hn1_fits: Verdict
    hn2_fits: Verdict
    hn1_fails_positive: Verdict
    hn2_fails_positive: Verdict
    instruction_negative_plausible: Verdict
    query_negative_plausible: Verdict


class FirstVerdict(_Out):
    # The reason before the decision (the model writes fields in this order); the boolean's token
    # log-probability is the preferred confidence, the explicit field the fallback
    # (pipeline/generation/cascade.py).
    reason: str
    passed: bool
    confidence: float = Field(description="probability, 0 to 1, that `passed` is right")


class FirstJudgeVerdicts(_Out):
    """The cascade's first (cheap) judge: the same checks as JudgeVerdicts, each with a confidence."""

    positive_fits: FirstVerdict
    positive_fails_instruction_negative: FirstVerdict
    positive_fails_query_negative: FirstVerdict
    hn1_fits: FirstVerdict
    hn2_fits: FirstVerdict
    hn1_fails_positive: FirstVerdict
    hn2_fails_positive: FirstVerdict
    instruction_negative_plausible: FirstVerdict
    query_negative_plausible: FirstVerdict
