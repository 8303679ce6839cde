"""The Batch API runner's remote side: the SDK client with long timeouts, retried calls, downloads,
creating and finding batches, and classifying a batch's failures (a mixin of `BatchRunner`).

Every answer of the Files and Batches API is checked before it is used (`as_batch`, `as_file`),
as the chat answers are (`pipeline/llm/completion.py`): the SDK hands back whatever it could not
parse (an HTML page from a proxy as a str, a body without the fields as a Batch whose fields are
None) or raises on it. Such an answer is a failed call, retried like a 5xx, then one line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, Optional, TypeVar

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import InfirError
from pipeline.llm.completion import Count
from pipeline.llm.openai_api.backend import OpenAIBackend, retry_after_seconds
from pipeline.llm.ratelimit import backoff_delay

log = logging.getLogger("pipeline.llm.openai_api.batch")

MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200_000_000  # "200 MB": the decimal reading, the stricter of the two
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
STATE_VERSION = 1
NOT_ANSWERED = "not answered by the batch API"
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Per-request error codes that say nothing about the request itself: worth another round.
RETRYABLE_CODES = {"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded", "timeout"}
_LONG_TIMEOUT_S = 600.0  # uploads and downloads of up to 200 MB
_T = TypeVar("_T")


@dataclass
class BatchReport:
    requests: int = 0  # distinct requests needed (first requests and repairs), cached ones included
    cached_before: int = 0  # of those, in the cache when first looked at
    submitted: int = 0  # lines sent in batches created by this call
    answered: int = 0  # answers written to the cache by this call (resumed batches included)
    failed: int = 0  # requests left without an answer (see `failures`)
    batches: int = 0  # batches created by this call
    files: int = 0  # input files uploaded by this call
    resumed: int = 0  # batches of an earlier call polled by this one
    rounds: int = 0  # submission rounds of this call
    waves: int = 0  # waves of this call: runs of files that fit the enqueued-token bound together
    queue_full: int = 0  # batches the service refused with token_limit_exceeded (they went again)
    prompt_tokens: int = 0  # of the answers written by this call
    completion_tokens: int = 0
    cost_usd: float = 0.0  # of the answers written by this call, at batch prices
    invalid_answers: int = 0  # output lines refused at the edge (not UTF-8, not a usable completion)
    usage_estimated: int = 0  # answers without usage, priced from the request's estimate
    failures: dict[str, str] = field(default_factory=dict)  # cache key -> reason

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Remote(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


_Id = Annotated[str, Field(strict=True, min_length=1)]
_Text = Annotated[Optional[str], Field(strict=True)]


class RemoteCounts(_Remote):
    total: Optional[Count] = None
    completed: Optional[Count] = None
    failed: Optional[Count] = None


class RemoteError(_Remote):
    code: _Text = None
    message: _Text = None


class RemoteErrors(_Remote):
    data: Optional[list[Optional[RemoteError]]] = None


class RemoteBatch(_Remote):
    """The fields of a Batch object the runner reads, checked."""

    id: _Id
    status: _Id
    input_file_id: _Text = None
    output_file_id: _Text = None
    error_file_id: _Text = None
    request_counts: Optional[RemoteCounts] = None
    errors: Optional[RemoteErrors] = None


class RemoteFile(_Remote):
    id: _Id


class _Malformed(Exception):
    """An answer of the Files/Batches API that is not what was asked for."""


def _as(model: type[_Remote], obj: Any, what: str) -> Any:
    data = obj.model_dump(warnings=False) if isinstance(obj, BaseModel) else obj
    if not isinstance(data, dict):
        shown = f" {data[:60]!r}" if isinstance(data, str) else ""
        raise _Malformed(f"the answer is not {what} but {type(data).__name__}{shown}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "<root>"
        raise _Malformed(f"the answer is not {what}: {where}: {err.get('msg')}") from None


def as_batch(obj: Any) -> RemoteBatch:
    return _as(RemoteBatch, obj, "a batch object")


def as_file(obj: Any) -> RemoteFile:
    return _as(RemoteFile, obj, "a file object")


def as_batch_list(page: Any) -> list[RemoteBatch]:
    data = getattr(page, "data", None)
    if not isinstance(data, list):
        raise _Malformed(f"the answer is not a list of batches but {type(page).__name__}")
    return [as_batch(b) for b in data]


@dataclass
class _Failure:
    reason: str
    retryable: bool


@dataclass
class _Entry:
    """One distinct first request of the tasks."""

    body: dict[str, Any]
    output_model: Any
    key_id: str
    task: Any = None  # the LLMTask: prices an answer that comes without usage (its estimate)


class _RemoteCalls:
    async def _create_batch(self, sid: str, sub: dict[str, Any]) -> Any:
        sdk = self._client()
        metadata = {"infir_submission": f"{self._state['token']}:{sid}", "infir_label": self.label[:500]}
        tried = False

        async def create() -> Any:
            nonlocal tried
            if tried:  # the last attempt may have created it before failing: never create twice
                found = await self._find_remote(sub["input_file_id"])
                if found is not None:
                    return found
            tried = True
            return await sdk.batches.create(
                input_file_id=sub["input_file_id"], endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )

        return await self._call(f"create the batch of {sid}", create, as_batch)

    async def _find_remote(self, input_file_id: str) -> RemoteBatch | None:
        sdk = self._client()
        batches = await self._call("list batches", lambda: sdk.batches.list(limit=100), as_batch_list)
        for b in batches:
            if b.input_file_id == input_file_id:
                return b
        return None

    async def _download(self, file_id: str, path: Path) -> None:
        sdk = self._client()

        async def fetch() -> None:
            tmp = path.with_name(path.name + ".part")
            async with sdk.files.with_streaming_response.content(file_id, timeout=self._long_timeout()) as resp:
                with open(tmp, "wb") as f:
                    async for chunk in resp.iter_bytes():
                        f.write(chunk)
            os.replace(tmp, path)

        await self._call(f"download {file_id}", fetch)

    def _client(self) -> Any:
        if self._api is None:
            # Same construction as online mode: base_url, key env var, organization/project, timeouts.
            self._api = OpenAIBackend(self.client.settings)
        if self._sdk is None:
            self._sdk = self._api._get_client()
        return self._sdk

    async def _close_sdk(self) -> None:
        if self._api is not None:
            await self._api.aclose()
        self._sdk = None

    def _long_timeout(self) -> float:
        return max(_LONG_TIMEOUT_S, self.client.settings.request_timeout_s)

    async def _call(self, what: str, fn: Callable[[], Awaitable[Any]], check: Callable[[Any], _T] | None = None) -> _T:
        """One Files/Batches API call with the settings' retry policy (the SDK itself never retries).
        `check`: what the answer must be (`as_batch`...); an answer that is not is retried, then one line."""
        s = self.client.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await fn()
                return check(answer) if check is not None else answer
            except (_Malformed, AttributeError, TypeError, ValueError) as e:
                # What the SDK could not read (it raises on a list page that is an HTML page), or an
                # answer without the fields: a proxy's error page, a server having a bad moment.
                why = str(e) if isinstance(e, _Malformed) else f"the answer could not be read ({type(e).__name__}: {e})"
                if attempt >= s.max_attempts:
                    raise InfirError(
                        f"{self.label}: batch API: {what}: {self._redact(why)[:300]} after {attempt} attempts"
                        f" (state kept in {self.state_dir}; rerun to resume)"
                    ) from None
                wait = None
            except openai.APIStatusError as e:
                status = e.status_code
                message = self._redact(str(getattr(e, "message", "") or e))[:300]
                if status == 404 and what.startswith("poll"):
                    raise _Gone(f"{what}: HTTP 404: {message}") from None
                if not (status in (408, 409, 429) or status >= 500) or attempt >= s.max_attempts:
                    raise InfirError(f"{self.label}: batch API: {what}: HTTP {status}: {message}") from None
                wait = retry_after_seconds(e.response.headers, status)
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                if attempt >= s.max_attempts:
                    raise InfirError(
                        f"{self.label}: batch API: {what}: {type(e).__name__} after {attempt} attempts"
                        f" (state kept in {self.state_dir}; rerun to resume)"
                    ) from None
                wait = None
            if wait is None:
                wait = backoff_delay(attempt, s.backoff_base_s, s.backoff_max_s, self._rng)
            log.debug("%s: %s failed (attempt %d); retry in %.2fs", self.label, what, attempt, wait)
            await asyncio.sleep(wait)

    def _redact(self, text: str) -> str:
        return self._api._redact(text) if self._api is not None else text

    # -- state ---------------------------------------------------------------------------------


class _Gone(Exception):
    """The batch no longer exists on the server."""


def _classify(status: Any, error: Any, body: Any) -> _Failure:
    """A failed line of a result file: its reason, and whether another round may succeed."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
    err = error if isinstance(error, dict) else {}
    code = err.get("code")
    message = str(err.get("message") or "no message")[:300]
    if isinstance(status, int):
        retryable = status in (408, 409, 429) or status >= 500
        return _Failure(f"HTTP {status}: {message}", retryable)
    return _Failure(f"{code or 'error'}: {message}", code in RETRYABLE_CODES)
