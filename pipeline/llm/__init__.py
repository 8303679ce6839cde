"""The LLM client layer: prompts, cache, rate limiting, retries, pricing, backends.

It knows nothing of what is asked: prompts are files named by the caller, output models are the
caller's pydantic classes, and scripted backends are registered by the caller (`register_script`).
Stages use: `load_prompt`, `LLMTask`, `default_params`, `make_client(settings).run(tasks)`.
The `openai` SDK is imported lazily (by the openai backend), so importing this package is cheap.
"""

from pipeline.llm.backends import register_script
from pipeline.llm.cache import Cache
from pipeline.llm.client import LLMClient, make_client
from pipeline.llm.openai_api.parse import parse_response
from pipeline.llm.openai_api.request import (
    build_body,
    cache_key,
    default_params,
    is_reasoning_model,
    request_of,
    strict_json_schema,
)
from pipeline.llm.pricing import PriceTable
from pipeline.llm.prompts import Prompt, load_prompt
from pipeline.llm.ratelimit import RateLimiter
from pipeline.llm.settings import LLMSettings
from pipeline.llm.types import (
    BUDGET_EXHAUSTED,
    CACHE_KEY_VERSION,
    PARSER_VERSION,
    Backend,
    BackendError,
    LLMResult,
    LLMTask,
    Totals,
    Usage,
)

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
    "register_script",
    "request_of",
    "strict_json_schema",
]
