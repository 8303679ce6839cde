"""Parsing a chat completion into the task's output model (versioned apart from the cache:
`PARSER_VERSION`), and the one repair request after an invalid answer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.llm.completion import summarize_validation
from pipeline.llm.openai_api.request import strict_json_schema


@dataclass
class ParseOutcome:
    value: BaseModel | None
    error: str | None
    text: str | None
    truncated: bool = False


_FENCE_RE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_response(response: dict[str, Any], output_model: type[BaseModel]) -> ParseOutcome:
    """Parser v1: the first choice's content as JSON, validated by `output_model`."""
    choices = response.get("choices") or []
    if not choices:
        return ParseOutcome(None, "empty response (no choices)", None)
    choice = choices[0] or {}
    message = choice.get("message") or {}
    text = message.get("content")
    refusal = message.get("refusal")
    finish = choice.get("finish_reason")
    if refusal:
        return ParseOutcome(None, f"refusal: {str(refusal)[:300]}", text or str(refusal))
    if finish == "length":
        return ParseOutcome(None, "truncated (finish_reason=length): the answer hit the token limit", text, True)
    if finish == "content_filter":
        return ParseOutcome(None, "blocked by the content filter", text)
    if not text or not str(text).strip():
        return ParseOutcome(None, "empty answer", text)
    src = str(text)
    m = _FENCE_RE.match(src)
    if m:  # lenient: some OpenAI-compatible servers fence their JSON
        src = m.group(1)
    try:
        data = json.loads(src)
    except json.JSONDecodeError as e:
        return ParseOutcome(None, f"invalid JSON: {e.msg} at char {e.pos}", text)
    except RecursionError:  # `[` x 10,000 from a misbehaving model: a bad answer, not a crash
        return ParseOutcome(None, "invalid JSON: nested too deeply", text)
    if not isinstance(data, dict):
        return ParseOutcome(None, f"invalid JSON: expected an object, got {type(data).__name__}", text)
    try:
        value = output_model.model_validate(data)
    except ValidationError as e:
        return ParseOutcome(None, f"schema violation: {summarize_validation(e, most=5)}", text)
    return ParseOutcome(value, None, text)


def logprobs_of(response: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The first choice's content token log-probabilities (`[{token, logprob, top_logprobs}]`),
    or None when the request did not ask for them or the endpoint does not return them."""
    choices = response.get("choices") or []
    lp = (choices[0] or {}).get("logprobs") if choices else None
    content = lp.get("content") if isinstance(lp, dict) else None
    return content if isinstance(content, list) and content else None


REPAIR_MESSAGE = (
    "Your previous answer could not be used: {error}.\n"
    "Reply again with only one complete JSON object, no other text, that matches this JSON schema:\n"
    "{schema}"
)


def repair_body(body: dict[str, Any], outcome: ParseOutcome, output_model: type[BaseModel]) -> dict[str, Any]:
    """The repair request: original messages + the bad answer + a user message naming the error.
    A truncated answer gets twice the token limit."""
    messages = list(body["messages"])
    if outcome.text:
        messages.append({"role": "assistant", "content": outcome.text})
    schema = json.dumps(strict_json_schema(output_model), sort_keys=True, separators=(",", ":"))
    messages.append({"role": "user", "content": REPAIR_MESSAGE.format(error=outcome.error, schema=schema)})
    new = dict(body)
    new["messages"] = messages
    if outcome.truncated:
        for k in ("max_completion_tokens", "max_tokens"):
            if isinstance(new.get(k), int):
                new[k] = new[k] * 2
    return new
