"""One row of a price table (USD per 1M tokens): the `[llm.prices."<model>"]` tables of a run
config and the `[models."<model>"]` tables of a price file (`prices.toml`) are both read through it.
A leaf module: a pydantic model, no side effects."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from pipeline.validate import SECTION_CONFIG


class PriceRow(BaseModel):
    model_config = SECTION_CONFIG  # unknown keys and inf / nan refused, naming the key

    input: float = Field(ge=0, description="USD per 1M prompt tokens")
    output: float = Field(ge=0, description="USD per 1M completion tokens (hidden reasoning included)")
    cached_input: float | None = Field(None, ge=0, description="USD per 1M cached prompt tokens; None: input")
    batch_discount: float | None = Field(None, gt=0, le=1, description="None: the table's default (0.5)")
    # Hidden reasoning tokens to expect per answer, by reasoning_effort: an assumption for estimates.
    reasoning_tokens: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
