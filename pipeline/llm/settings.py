"""Settings of the LLM client (the `[llm]` section of a run config).

The API key itself is never part of the config: `api_key_env` names the environment variable
that holds it, and the backend reads it once, at construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from pipeline.llm.families import is_reasoning_model
from pipeline.llm.price_settings import PriceRow
from pipeline.validate import SECTION_CONFIG


QueueTokens = Annotated[int, Field(strict=True, gt=0)]  # strict: `true` is not 1 token


class LLMSettings(BaseModel):
    model_config = SECTION_CONFIG

    # "offline" (the deterministic local backend) is the default so that a fresh clone runs with
    # no key and no spending; real runs pass `--backend openai`.
    backend: Literal["openai", "offline"] = "offline"
    # None: the SDK default, or $OPENAI_BASE_URL when set (any OpenAI-compatible server works).
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="NAME of the env var holding the key")
    organization: str | None = None
    project: str | None = None

    concurrency: int = Field(32, ge=1, le=4096, description="HTTP requests in flight at once")
    requests_per_minute: float | None = Field(None, gt=0, description="None: unbounded")
    tokens_per_minute: float | None = Field(None, gt=0, description="None: unbounded")

    max_attempts: int = Field(6, ge=1, le=100, description="HTTP attempts per request, first one included")
    # -- timeouts by model family; waiting for rate limits (pipeline/llm/client_send.py) --
    # Chat models answer in seconds; reasoning models (o1/o3/o4-mini/gpt-5) often think 30-120 s,
    # and an attempt abandoned at 60 s is sent again (and the first may still be billed).
    request_timeout_s: float = Field(60.0, gt=0, description="one HTTP attempt to a chat model")
    reasoning_request_timeout_s: float = Field(600.0, gt=0, description="one HTTP attempt to a reasoning model")
    deadline_s: float = Field(300.0, gt=0, description="one request, all its retries included; never "
                              "shorter than its attempt timeout; waiting for rate limits not counted")
    max_rate_limit_wait_s: float = Field(3600.0, ge=0, description="longest rate-limit wait before the client stops")

    def attempt_timeout_s(self, model: str) -> float:
        """One HTTP attempt's timeout for `model`, by its family."""
        return self.reasoning_request_timeout_s if is_reasoning_model(model) else self.request_timeout_s

    def deadline_for(self, model: str) -> float:
        """One request's deadline (retries included): never shorter than one attempt's timeout."""
        return max(self.deadline_s, self.attempt_timeout_s(model))
    # -- end of timeouts and rate-limit waits --
    backoff_base_s: float = Field(1.0, ge=0, description="exponential backoff base (full jitter)")
    backoff_max_s: float = Field(60.0, ge=0, description="cap of one backoff sleep")
    repair: bool = Field(True, description="one repair request after an invalid answer")
    # -- the server's wall and its structured-output form (pipeline/llm/breaker.py) --
    # How the strict JSON schema is sent: OpenAI's `{"type": "json_schema", "json_schema": {...}}`,
    # or `{"type": "json_object", "schema": ...}` for servers that take only that (llama-cpp-python).
    structured_output: Literal["json_schema", "json_object"] = "json_schema"
    stop_after_same_errors: int = Field(
        20, ge=0, description="stop when the first N HTTP answers are all the same error (0: never)"
    )

    # "batch": the LLM stages send their requests through the Batch API (half price, results within
    # 24 h) into the cache, then complete from it exactly as online mode would.
    mode: Literal["online", "batch"] = "online"
    batch_poll_interval_s: float = Field(30.0, gt=0, description="seconds between batch status polls")
    batch_max_rounds: int = Field(3, ge=1, description="submissions per stage run: the first + resubmits of failures")
    # The Batch API's enqueued-token limit (docs/batch.md): at most this many prompt tokens of a
    # model's batches are queued at once; requests go in waves that fit. An int for every model, or
    # a table `[llm.batch_queue_tokens]` "gpt-4o-mini" = 2000000 (a model not in it: not bounded).
    # None: not bounded up front (a batch refused with token_limit_exceeded waits and goes again).
    batch_queue_tokens: QueueTokens | dict[str, QueueTokens] | None = None

    max_cost_usd: float | None = Field(None, ge=0, description="stop sending requests once spent")
    # None disables the persistent cache (not recommended: a rerun pays again).
    cache_path: Path | None = Path(".cache/llm.sqlite3")
    price_file: Path | None = Field(None, description="None: the bundled pipeline/llm/prices.toml")
    # -- prices in the config: [llm.prices."<model>"] input, output, cached_input, batch_discount --
    # USD per 1M tokens, merged over the price file (the config wins): a model the table does not
    # know gets its price here, so a cost cap, a dry run and a plan can count it.
    prices: dict[str, PriceRow] = Field(default_factory=dict)
