"""Settings of the LLM client (the `[llm]` section of a run config).

The API key itself is never part of the config: `api_key_env` names the environment variable
that holds it, and the backend reads it once, at construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.validate import SECTION_CONFIG


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
    request_timeout_s: float = Field(60.0, gt=0, description="one HTTP attempt")
    deadline_s: float = Field(300.0, gt=0, description="one request, all its retries included")
    backoff_base_s: float = Field(1.0, ge=0, description="exponential backoff base (full jitter)")
    backoff_max_s: float = Field(60.0, ge=0, description="cap of one backoff sleep")
    repair: bool = Field(True, description="one repair request after an invalid answer")

    # "batch": the LLM stages send their requests through the Batch API (half price, results within
    # 24 h) into the cache, then complete from it exactly as online mode would.
    mode: Literal["online", "batch"] = "online"
    batch_poll_interval_s: float = Field(30.0, gt=0, description="seconds between batch status polls")
    batch_max_rounds: int = Field(3, ge=1, description="submissions per stage run: the first + resubmits of failures")

    max_cost_usd: float | None = Field(None, ge=0, description="stop sending requests once spent")
    # None disables the persistent cache (not recommended: a rerun pays again).
    cache_path: Path | None = Path(".cache/llm.sqlite3")
    price_file: Path | None = Field(None, description="None: the bundled pipeline/llm/prices.toml")
