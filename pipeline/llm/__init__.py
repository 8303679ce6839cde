"""The LLM client layer: prompts, cache, rate limiting, retries, pricing, backends.

Stages use: `load_prompt`, `LLMTask`, `default_params`, `make_client(settings).run(tasks)`.
The `openai` backend is imported lazily (by `make_client`), so importing this package is cheap.
"""

from pipeline.llm.cache import Cache
from pipeline.llm.client import (
    BUDGET_EXHAUSTED,
    CACHE_KEY_VERSION,
    PARSER_VERSION,
    Backend,
    BackendError,
    LLMClient,
    LLMResult,
    LLMTask,
    Totals,
    Usage,
    build_body,
    cache_key,
    default_params,
    is_reasoning_model,
    make_client,
    parse_response,
    strict_json_schema,
)
from pipeline.llm.pricing import PriceTable
from pipeline.llm.prompts import Prompt, load_prompt
from pipeline.llm.ratelimit import RateLimiter
from pipeline.llm.settings import LLMSettings

__all__ = [
    "BUDGET_EXHAUSTED",
    "CACHE_KEY_VERSION",
    "PARSER_VERSION",
    "Backend",
    "BackendError",
    "Cache",
    "LLMClient",
    "LLMResult",
    "LLMSettings",
    "LLMTask",
    "PriceTable",
    "Prompt",
    "RateLimiter",
    "Totals",
    "Usage",
    "build_body",
    "cache_key",
    "default_params",
    "is_reasoning_model",
    "load_prompt",
    "make_client",
    "parse_response",
    "strict_json_schema",
]
