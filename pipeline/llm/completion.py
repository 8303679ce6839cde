"""What a chat.completion must look like before anything of it is used, priced or cached.

Every answer crosses this edge once: a backend's answer (`client_send._attempt`), a Batch API
output line (`batch_collect`) and a cache row read back (`cache.Cache`). An answer that does not
validate is a failed attempt (retried like a 2xx body that is not JSON), never stored; a cache row
that does not is dropped and asked again. The model checks types only where the client reads:
`choices` a list of objects with a `message` whose `content`/`refusal` are strings or null,
`finish_reason` a string or null, `usage` (optional: an answer without it is priced from the
request's estimate) with non-negative integer counts, details optional. Everything else a server
adds is ignored, so a field a newer API adds never fails an answer. Whether the content is the
JSON the task asked for is the parser's question (`openai_api/parse.py`), with its repair request.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# A count of tokens in one answer. strict: "12", 12.5, true, Infinity (a float to Python's json)
# are refused, not coerced. The bound keeps a forged count from overflowing SQLite's INTEGER and
# the cost arithmetic: no answer has a billion tokens.
MAX_TOKENS = 1_000_000_000
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)]
Text = Annotated[Optional[str], Field(strict=True)]


class _Checked(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _PromptDetails(_Checked):
    cached_tokens: Optional[Count] = None


class _CompletionDetails(_Checked):
    reasoning_tokens: Optional[Count] = None


class _Usage(_Checked):
    prompt_tokens: Count
    completion_tokens: Count
    prompt_tokens_details: Optional[_PromptDetails] = None
    completion_tokens_details: Optional[_CompletionDetails] = None

    @model_validator(mode="after")
    def _parts_within_totals(self) -> _Usage:
        # cached tokens are a part of the prompt, reasoning tokens a part of the completion: more
        # than the whole would price the rest negative.
        cached = self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else None
        reasoning = self.completion_tokens_details.reasoning_tokens if self.completion_tokens_details else None
        if cached is not None and cached > self.prompt_tokens:
            raise ValueError(f"cached_tokens {cached} > prompt_tokens {self.prompt_tokens}")
        if reasoning is not None and reasoning > self.completion_tokens:
            raise ValueError(f"reasoning_tokens {reasoning} > completion_tokens {self.completion_tokens}")
        return self


class _Message(_Checked):
    content: Text = None
    refusal: Text = None


class _Choice(_Checked):
    message: _Message
    finish_reason: Text = None


class _Completion(_Checked):
    # No choices and empty choices are the same answer to the parser: "empty response", repaired.
    choices: list[_Choice] = []
    usage: Optional[_Usage] = None
    model: Text = None
    batch: Text = Field(None, alias="_infir_batch")  # types.BATCH_FIELD: the batch that answered


class InvalidAnswer(ValueError):
    """An answer (or a stored one) that is not a chat.completion the client can use."""


def summarize_validation(e: ValidationError, most: int = 3) -> str:
    """The first `most` errors of a pydantic validation, as `loc: msg` (the parser's schema
    violations and the edge check's invalid answers say what failed the same way)."""
    parts = []
    for err in e.errors()[:most]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg')}")
    more = e.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def check_completion(response: Any) -> dict[str, Any]:
    """`response` itself when it is a usable chat.completion; else InvalidAnswer with the reason."""
    if not isinstance(response, dict):
        raise InvalidAnswer(f"not a chat.completion object but {type(response).__name__}")
    try:
        _Completion.model_validate(response)
    except ValidationError as e:
        raise InvalidAnswer(summarize_validation(e)) from None
    return response


def decode_completion(text: Any) -> dict[str, Any]:
    """A stored answer (JSON text) read back and checked; InvalidAnswer when it cannot be used."""
    if not isinstance(text, (str, bytes)):
        raise InvalidAnswer(f"stored as {type(text).__name__}, not JSON text")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidAnswer(f"not JSON ({type(e).__name__})") from None
    return check_completion(data)


def has_usage(response: dict[str, Any]) -> bool:
    """The answer says what it cost (a checked answer's `usage` is complete or absent)."""
    return isinstance(response.get("usage"), dict)
