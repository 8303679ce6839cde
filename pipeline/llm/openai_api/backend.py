"""Backend over the `openai` SDK's `AsyncOpenAI` (OpenAI, Azure's OpenAI-compatible endpoint,
vLLM, Ollama, llama.cpp: anything serving POST /v1/chat/completions).

RETRY DECISION: exactly one layer retries, `LLMClient._send` (client.py). The SDK runs with
`max_retries=0`, so attempts never multiply (SDK 2 retries x our 6 attempts = 18 calls, with two
backoff policies fighting). One `complete()` call here is one HTTP attempt: it returns the
response dict, or raises `BackendError` classified for the client's loop:
  - retryable: 408, 409, 429, 5xx, timeouts, connection errors (dropped sockets), a 2xx body that
    is not JSON; `x-should-retry: true|false` from the server overrides the status rule.
  - wait hint (`retry_after`, seconds): `retry-after-ms`, then `Retry-After` (seconds or HTTP date),
    then for a 429 the message's "Please try again in 180ms" (OpenAI's; the reset headers below
    are the time to a FULL bucket, far longer than needed), then `x-ratelimit-reset-requests` /
    `x-ratelimit-reset-tokens` (durations like "1s", "6m0s", "20ms"; the one whose
    `x-ratelimit-remaining-*` is 0, else the shorter).
    The client honours it (never retries sooner) and, for a 429, pauses the whole client.
  - rate-limit headers: every HTTP answer's `x-ratelimit-*` headers (`RateLimitHeaders`, nothing
    else of them) go to the caller's `observe` callback, which paces the client by them; they are
    never put in the response dict (so never in the cache) nor logged.
  - timeout: one attempt's, by model family (`settings.attempt_timeout_s`), per request.
  - fatal (stop the client): 401, 403, 404 (unknown model / endpoint), 429 insufficient_quota.
  - any other 4xx (400 bad request, 422...): not retried, the task fails with the reason.

SECRETS: the key is read once from the env var that `settings.api_key_env` names and handed to the
SDK; it is never logged, never put in an error string (server messages are redacted), never part
of the request body (the cache key's input). Headers are never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import time
from typing import Any, Callable

import httpx2
import openai
from openai import AsyncOpenAI

from pipeline.errors import InfirError
from pipeline.llm.ratelimit import RateLimitHeaders, parse_duration
from pipeline.llm.types import BackendError, LLMTask
from pipeline.llm.settings import LLMSettings

log = logging.getLogger(__name__)

_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{4,}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
# OpenAI's 429 message: "... Please try again in 180ms." / "in 6m0s." / "in 1.5s."
_TRY_AGAIN = re.compile(r"try again in (\d[\dhmsµnu.]*?)\.?(?:\s|$)")

__all__ = ["OpenAIBackend", "parse_duration", "retry_after_seconds"]


def retry_after_seconds(
    headers: Any, status: int | None = None, now: float | None = None, message: str | None = None
) -> float | None:
    """The server's wait hint in seconds, or None (see the module docstring for the order)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is not None:
        try:
            return max(0.0, float(ra))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - (now if now is not None else time.time()))
    if status == 429:
        said = _TRY_AGAIN.search(message or "")
        wait = parse_duration(said.group(1)) if said else None
        if wait is not None:
            return wait
        resets = []
        flagged = []
        for kind in ("requests", "tokens"):
            d = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if d is None:
                continue
            resets.append(d)
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            try:
                if remaining is not None and float(remaining) <= 0:
                    flagged.append(d)
            except ValueError:
                pass
        if flagged:
            return max(flagged)
        if resets:
            return min(resets)
    return None


class OpenAIBackend:
    name = "openai"
    reports_rate_limits = True  # `complete` takes `observe` (the client checks this)

    def __init__(self, settings: LLMSettings):
        key = os.environ.get(settings.api_key_env)
        if not key:
            raise InfirError(
                f"LLM backend 'openai': environment variable {settings.api_key_env} is not set "
                "(llm.api_key_env names the variable that holds the API key)"
            )
        self._api_key = key
        self.settings = settings
        self.base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._client: AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(base_url={self.base_url!r})"

    def _get_client(self) -> AsyncOpenAI:
        # httpx2 connection pools belong to one event loop: one SDK client per loop.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            s = self.settings
            http_client = openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(
                    max_connections=max(1000, 2 * s.concurrency),
                    max_keepalive_connections=max(100, s.concurrency),
                ),
                timeout=httpx2.Timeout(s.request_timeout_s, connect=min(10.0, s.request_timeout_s)),
            )
            self._client = AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                organization=s.organization,
                project=s.project,
                max_retries=0,  # see RETRY DECISION above
                timeout=httpx2.Timeout(s.request_timeout_s, connect=min(10.0, s.request_timeout_s)),
                http_client=http_client,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a client of a finished loop: nothing to release
                pass

    def _redact(self, text: str) -> str:
        text = text.replace(self._api_key, "***")
        text = _KEY_LIKE.sub(r"\1***", text)
        return _BEARER.sub(r"\1***", text)

    def _status_error(self, e: openai.APIStatusError) -> BackendError:
        status = e.status_code
        headers = e.response.headers
        code = getattr(e, "code", None)
        message = self._redact(str(getattr(e, "message", "") or e))[:500]
        wait = retry_after_seconds(headers, status, message=message)
        retryable = status in (408, 409, 429) or status >= 500
        should = (headers.get("x-should-retry") or "").lower()
        if should == "true":
            retryable = True
        elif should == "false":
            retryable = False
        fatal = status in (401, 403, 404) or (status == 429 and code == "insufficient_quota")
        if fatal:
            retryable = False
        return BackendError(
            message, status=status, retryable=retryable, retry_after=wait if retryable else None,
            fatal=fatal, kind="status",
        )

    async def complete(
        self, body: dict[str, Any], task: LLMTask, observe: Callable[[RateLimitHeaders | None], None] | None = None
    ) -> dict[str, Any]:
        """One HTTP attempt. `observe` gets the answer's rate-limit headers (200 and errors alike)."""
        client = self._get_client()
        timeout_s = self.settings.attempt_timeout_s(str(body.get("model") or task.model))
        try:
            # `client.post` (the SDK's documented call for raw endpoints) with the body we built:
            # same auth, base URL, timeouts and error mapping as `chat.completions.create`, minus
            # its per-request TypedDict transform (a recursive walk of messages and JSON schema,
            # ~20% of the SDK's CPU per call) and its pydantic model, since we cache the raw dict.
            # Bearer auth only: never send an admin key to a third-party base_url.
            http_response = await client.post(
                "/chat/completions", cast_to=httpx2.Response, body=body,
                options={"security": {"bearer_auth": True},
                         "timeout": httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s))},
            )
        except openai.APITimeoutError:
            raise BackendError(f"request timed out after {timeout_s:g}s", retryable=True, kind="timeout") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
            raise BackendError(
                f"connection error: {self._redact(detail)[:300]}", retryable=True, kind="connection"
            ) from None
        except openai.APIStatusError as e:
            limits = RateLimitHeaders.parse(e.response.headers)
            if observe is not None and limits is not None:  # (a proxy's 502 has none: not news)
                observe(limits)
            raise self._status_error(e) from None
        if observe is not None:
            observe(RateLimitHeaders.parse(http_response.headers))
        try:
            data = http_response.json()
        except ValueError:
            raise BackendError(
                "response body is not JSON", status=http_response.status_code, retryable=True, kind="body"
            ) from None
        if not isinstance(data, dict):
            raise BackendError("response body is not a JSON object", retryable=True, kind="body")
        return data
