"""The LLM layer's shared types: a task, its result, usage and totals, the backend protocol.

Every module of `pipeline/llm/` (client, backends, batch) imports these from here, so no two of
them import each other for a type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from pipeline.llm.prompts import Prompt

CACHE_KEY_VERSION = "v1"
PARSER_VERSION = 1
# Top-level field of a cached response that came from the Batch API (value: the batch id), so that
# every later use of it, cache hits included, is priced at the batch discount (pipeline/llm/batch.py).
BATCH_FIELD = "_infir_batch"


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0  # billed output: visible and hidden reasoning tokens together
    cached_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens, hidden reasoning (reasoning models)
    # The answer said nothing of its usage: these are the request's estimate (client_spend.py),
    # priced and counted against the cap like a real count.
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.estimated or other.estimated,
        )

    @classmethod
    def of(cls, response: dict[str, Any]) -> Usage:
        u = response.get("usage") or {}
        details = u.get("prompt_tokens_details") or {}
        out_details = u.get("completion_tokens_details") or {}
        return cls(
            int(u.get("prompt_tokens") or 0),
            int(u.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
            int(out_details.get("reasoning_tokens") or 0),
        )


@dataclass
class LLMTask:
    key_id: str  # the caller's id for the row (not part of the cache key)
    prompt: Prompt
    variables: dict[str, Any]
    output_model: type[BaseModel]
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    # How the output schema is sent (`llm.structured_output`): "json_schema" or "json_object".
    structured_output: str = "json_schema"
    # (body, cache key), built once by `request_of`: a stage can build it ahead, off the event loop.
    # init=False: `dataclasses.replace` (a changed prompt, model...) must not copy a stale request.
    # A task is not edited in place once its request is built.
    _request: tuple[dict[str, Any], str] | None = field(default=None, init=False, repr=False, compare=False)


@dataclass
class LLMResult:
    key_id: str
    ok: bool
    value: BaseModel | None
    error: str | None
    usage: Usage  # tokens of the response(s) used, cached or not (repair included)
    cost_usd: float  # spent by THIS run for this task (0.0 when served from cache)
    cached: bool  # every response used came from the cache (or an identical in-flight request)
    http_calls: int  # HTTP attempts made for this task in this run (retries and repair included)
    cache_key: str  # key of the task's first request
    raw_text: str | None = None  # text of the last answer
    repaired: bool = False
    batch: bool = False  # every response used came from the Batch API (priced at its discount)
    # The answer's token log-probabilities (`choices[0].logprobs.content`: [{token, logprob,
    # top_logprobs}]) when the request asked for them and the endpoint returned them; None otherwise.
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Totals:
    requests: int = 0  # tasks processed
    cache_hits: int = 0  # responses served from the cache or from an identical in-flight request
    http_calls: int = 0  # HTTP attempts (failed ones included)
    # Attempts that ended with no HTTP answer (timeout, connection error). The server may or may not
    # have received them (a write on a keep-alive socket the server just closed never arrives), so
    # the server's request count lies between http_calls - no_response and http_calls.
    no_response: int = 0
    retries: int = 0
    prompt_tokens: int = 0  # billed in this run (HTTP responses only)
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0  # spent in this run
    saved_cost_usd: float = 0.0  # what the cache hits cost when they were made
    failures: int = 0
    repairs: int = 0
    # Answers refused at the edge (pipeline/llm/completion.py): failed attempts, never cached.
    invalid_answers: int = 0
    # Cache rows that were not a usable chat.completion: dropped and asked again.
    cache_dropped: int = 0
    # Answers of this run without `usage`, priced from the request's estimate.
    usage_estimated: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BackendError(Exception):
    """One failed backend attempt, classified for the retry loop.

    retryable: worth another attempt (408/409/429/5xx, timeouts, connection errors).
    retry_after: seconds the server asked us to wait (Retry-After & co), or None.
    fatal: no request of this client can succeed (bad key, quota, unknown model): stop sending.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        fatal: bool = False,
        kind: str = "error",
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.fatal = fatal
        self.kind = kind

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.status else self.message


class Backend(Protocol):
    name: str

    async def complete(self, body: dict[str, Any], task: LLMTask) -> dict[str, Any]:
        """One attempt; a chat.completion-shaped dict, or raise BackendError."""
        ...


BUDGET_EXHAUSTED = "budget exhausted"
