"""Backend over the `openai` SDK's `AsyncOpenAI` (OpenAI, Azure's OpenAI-compatible endpoint,
vLLM, Ollama, llama.cpp: anything serving POST /v1/chat/completions).

RETRY DECISION: exactly one layer retries, `LLMClient._send` (client.py). The SDK runs with
`max_retries=0`, so attempts never multiply (SDK 2 retries x our 6 attempts = 18 calls, with two
backoff policies fighting). One `complete()` call here is one HTTP attempt: it returns the
response dict, or raises `BackendError` classified for the client's loop:
  - retryable: 408, 409, 429, 5xx, timeouts, connection errors (dropped sockets), a 2xx body that
    is not JSON; `x-should-retry: true|false` from the server overrides the status rule.
  - wait hint (`retry_after`, seconds): `retry-after-ms`, then `Retry-After` (seconds or HTTP date),
    then for a 429 `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` (durations like
    "1s", "6m0s", "20ms"; the one whose `x-ratelimit-remaining-*` is 0, else the shorter).
    The client honours it (never retries sooner) and, for a 429, pauses the whole client.
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
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

from pipeline.errors import InfirError
from pipeline.llm.types import BackendError, LLMTask
from pipeline.llm.settings import LLMSettings

log = logging.getLogger(__name__)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{4,}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def parse_duration(value: str | None) -> float | None:
    """Seconds from "1s", "6m0s", "20ms", "1h2m3.5s" or a bare number; None if unparseable."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(v)
    if not parts or "".join(n + u for n, u in parts) != v:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def retry_after_seconds(headers: Any, status: int | None = None, now: float | None = None) -> float | None:
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
        wait = retry_after_seconds(headers, status)
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

    async def complete(self, body: dict[str, Any], task: LLMTask) -> dict[str, Any]:
        client = self._get_client()
        try:
            # `client.post` (the SDK's documented call for raw endpoints) with the body we built:
            # same auth, base URL, timeouts and error mapping as `chat.completions.create`, minus
            # its per-request TypedDict transform (a recursive walk of messages and JSON schema,
            # ~20% of the SDK's CPU per call) and its pydantic model, since we cache the raw dict.
            # Bearer auth only: never send an admin key to a third-party base_url.
            http_response = await client.post(
                "/chat/completions", cast_to=httpx2.Response, body=body, options={"security": {"bearer_auth": True}}
            )
        except openai.APITimeoutError:
            raise BackendError(
                f"request timed out after {self.settings.request_timeout_s:g}s", retryable=True, kind="timeout"
            ) from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
            raise BackendError(
                f"connection error: {self._redact(detail)[:300]}", retryable=True, kind="connection"
            ) from None
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        try:
            data = http_response.json()
        except ValueError:
            raise BackendError(
                "response body is not JSON", status=http_response.status_code, retryable=True, kind="body"
            ) from None
        if not isinstance(data, dict):
            raise BackendError("response body is not a JSON object", retryable=True, kind="body")
        return data
