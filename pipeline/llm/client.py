"""The LLM client: a request (`LLMTask`) in, a validated pydantic object (`LLMResult.value`) out.

Layers, outermost first:
  persistent cache (+ in-run dedup of identical requests)
  -> budget / abort checks -> concurrency bound (semaphore) -> rate limiter (RPM/TPM, 429 pause)
  -> retries (this module, `_send`: the ONLY retry layer) -> backend (one HTTP attempt per call)
Parsing (versioned, `PARSER_VERSION`) runs after the cache lookup on the raw stored response, so a
parser fix costs no calls. An invalid answer gets exactly one repair request (itself cached).
A failing task never raises out of `run`: it ends `ok=False` with the reason.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import random
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from pydantic import BaseModel, ValidationError

from pipeline.errors import InfirError
from pipeline.llm.cache import Cache
from pipeline.llm.prompts import Prompt
from pipeline.llm.pricing import PriceTable
from pipeline.llm.ratelimit import RateLimiter, backoff_delay
from pipeline.llm.settings import LLMSettings

log = logging.getLogger(__name__)

CACHE_KEY_VERSION = "v1"
PARSER_VERSION = 1
# Top-level field of a cached response that came from the Batch API (value: the batch id), so that
# every later use of it, cache hits included, is priced at the batch discount (pipeline/llm/batch.py).
BATCH_FIELD = "_infir_batch"


# ------------------------------------------------------------------------------------------------
# Data types


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    @classmethod
    def of(cls, response: dict[str, Any]) -> Usage:
        u = response.get("usage") or {}
        details = u.get("prompt_tokens_details") or {}
        return cls(
            int(u.get("prompt_tokens") or 0),
            int(u.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
        )


@dataclass
class LLMTask:
    key_id: str  # the caller's id for the row (not part of the cache key)
    prompt: Prompt
    variables: dict[str, Any]
    output_model: type[BaseModel]
    model: str
    params: dict[str, Any] = field(default_factory=dict)
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


@dataclass
class Totals:
    requests: int = 0  # tasks processed
    cache_hits: int = 0  # responses served from the cache or from an identical in-flight request
    http_calls: int = 0  # HTTP attempts (failed ones included)
    retries: int = 0
    prompt_tokens: int = 0  # billed in this run (HTTP responses only)
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0  # spent in this run
    saved_cost_usd: float = 0.0  # what the cache hits cost when they were made
    failures: int = 0
    repairs: int = 0

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


class _RequestFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


BUDGET_EXHAUSTED = "budget exhausted"


# ------------------------------------------------------------------------------------------------
# Request parameters and body

_REASONING_RE = re.compile(r"^(o\d|gpt-5)")


def is_reasoning_model(model: str) -> bool:
    """o1*, o3*, o4*, gpt-5* (not gpt-5-chat*): they take reasoning_effort, not temperature."""
    name = model.rsplit("/", 1)[-1].lower()
    return bool(_REASONING_RE.match(name)) and not name.startswith("gpt-5-chat")


def default_params(
    model: str,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    reasoning_effort: str = "medium",
) -> dict[str, Any]:
    """The right parameter set for `model`.

    Reasoning models: {reasoning_effort, max_completion_tokens (default 4096: reasoning tokens
    count against it)}; others: {temperature, max_tokens (default 1024)}.
    """
    if is_reasoning_model(model):
        return {"reasoning_effort": reasoning_effort, "max_completion_tokens": max_tokens or 4096}
    return {"temperature": temperature, "max_tokens": max_tokens or 1024}


_SCHEMA_CHILD_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_CHILD_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_CHILD_ONE = ("items", "not", "additionalProperties", "contains")


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise InfirError(f"unsupported JSON schema $ref {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _strictify(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    # A $ref with siblings (e.g. a description) is not allowed in strict mode: inline it.
    if "$ref" in node and len(node) > 1:
        merged = {**copy.deepcopy(_resolve_ref(root, node.pop("$ref"))), **node}
        node.clear()
        node.update(merged)
    node.pop("title", None)
    node.pop("default", None)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        # pydantic wraps a described $ref as allOf[{$ref}]: flatten it (strict mode needs plain nodes)
        node.pop("allOf")
        inner = all_of[0]
        if set(inner) == {"$ref"} and not node:
            node.update(inner)
            return node
        if "$ref" in inner:
            inner = {**copy.deepcopy(_resolve_ref(root, inner["$ref"])), **{k: v for k, v in inner.items() if k != "$ref"}}
        merged = {**inner, **node}
        node.clear()
        node.update(merged)
        return _strictify(node, root)
    for k in _SCHEMA_CHILD_MAPS:
        if isinstance(node.get(k), dict):
            for sub in node[k].values():
                if isinstance(sub, dict):
                    _strictify(sub, root)
    for k in _SCHEMA_CHILD_LISTS:
        if isinstance(node.get(k), list):
            for sub in node[k]:
                if isinstance(sub, dict):
                    _strictify(sub, root)
    for k in _SCHEMA_CHILD_ONE:
        if isinstance(node.get(k), dict):
            _strictify(node[k], root)
    if isinstance(node.get("properties"), dict):
        node["required"] = list(node["properties"])
        node.setdefault("additionalProperties", False)
    elif node.get("type") == "object":
        node.setdefault("additionalProperties", False)
    return node


@functools.lru_cache(maxsize=256)
def _strict_schema_json(model: type[BaseModel]) -> str:
    schema = copy.deepcopy(model.model_json_schema())
    # Declaration order is kept: the model writes fields in this order (put reasoning first).
    return json.dumps(_strictify(schema, schema))


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A strict-mode JSON schema for `model`: additionalProperties false and every property
    required on every object, titles/defaults dropped, $defs kept (refs with siblings inlined).
    Our own code, not the SDK's private helper, so cache keys don't move with SDK upgrades."""
    return json.loads(_strict_schema_json(model))


@functools.lru_cache(maxsize=256)
def response_format_for(model: type[BaseModel]) -> dict[str, Any]:
    """Shared, read-only: never mutate the returned dict."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "output"
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "strict": True, "schema": strict_json_schema(model)},
    }


_RESERVED_PARAMS = {"model", "messages", "response_format", "stream", "n"}


def build_body(task: LLMTask) -> dict[str, Any]:
    """The request body: model, rendered messages, params (None values dropped), response_format."""
    bad = _RESERVED_PARAMS & set(task.params)
    if bad:
        raise InfirError(f"LLM task {task.key_id}: params may not set {sorted(bad)}")
    if is_reasoning_model(task.model):
        wrong = {"temperature", "max_tokens"} & {k for k, v in task.params.items() if v is not None}
        if wrong:
            raise InfirError(
                f"LLM task {task.key_id}: reasoning model {task.model} takes reasoning_effort and "
                f"max_completion_tokens, not {sorted(wrong)} (use default_params)"
            )
    body: dict[str, Any] = {"model": task.model, "messages": task.prompt.render(**task.variables)}
    body.update((k, v) for k, v in task.params.items() if v is not None)
    body["response_format"] = response_format_for(task.output_model)
    return body


def request_of(task: LLMTask) -> tuple[dict[str, Any], str]:
    """The task's request body and cache key, built on first use and kept on the task."""
    if task._request is None:
        body = build_body(task)
        task._request = (body, cache_key(body))
    return task._request


def _normalize(obj: Any) -> Any:
    # 0.0 and 0 (TOML float vs int) must give the same key.
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _normalize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalize(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(_normalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(body: dict[str, Any]) -> str:
    """"v1:" + sha256(canonical JSON of the body). The body never holds the key or headers."""
    return f"{CACHE_KEY_VERSION}:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------
# Parsing (versioned apart from the cache)


@dataclass
class ParseOutcome:
    value: BaseModel | None
    error: str | None
    text: str | None
    truncated: bool = False


_FENCE_RE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def _summarize_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg')}")
    more = e.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


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
        return ParseOutcome(None, f"schema violation: {_summarize_validation(e)}", text)
    return ParseOutcome(value, None, text)


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


# ------------------------------------------------------------------------------------------------
# Token estimates

_tiktoken_encoders: dict[str, Any] = {}


def _encoder(model: str) -> Any:
    if model in _tiktoken_encoders:
        return _tiktoken_encoders[model]
    enc = None
    try:  # optional; offline installs without BPE files fall back to chars/4
        import tiktoken  # type: ignore[import-not-found]

        try:
            enc = tiktoken.encoding_for_model(model)
        except KeyError:
            enc = tiktoken.get_encoding("o200k_base")
    except Exception:
        enc = None
    _tiktoken_encoders[model] = enc
    return enc


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]], model: str | None = None, exact: bool = False) -> int:
    """chars/4 (+4 per message); tiktoken when `exact` and installed."""
    enc = _encoder(model or "") if exact else None
    total = 3
    for m in messages:
        content = m.get("content") or ""
        total += 4 + (len(enc.encode(content)) if enc is not None else (len(content) + 3) // 4)
    return total


def max_output_tokens(body: dict[str, Any]) -> int:
    v = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(v) if isinstance(v, (int, float)) else 0


# ------------------------------------------------------------------------------------------------
# The client


@dataclass
class _Acc:
    calls: int = 0
    cost: float = 0.0


class LLMClient:
    def __init__(
        self,
        settings: LLMSettings,
        backend: Backend,
        cache: Cache | None = None,
        prices: PriceTable | None = None,
        *,
        rng: random.Random | None = None,
    ):
        self.settings = settings
        self.backend = backend
        self.cache = cache
        self.prices = prices if prices is not None else PriceTable.load(settings.price_file)
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.totals = Totals()
        self.budget_exhausted = False
        self.stop_reason: str | None = None  # set by a fatal backend error or a cache write failure
        self._rng = rng or random.Random()
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None

    # -- public API --------------------------------------------------------------------------
    def run(
        self, tasks: Iterable[LLMTask], on_result: Callable[[LLMResult], None] | None = None
    ) -> list[LLMResult]:
        """Sync facade of `arun` (closes the backend's connections at the end)."""

        async def main() -> list[LLMResult]:
            try:
                return await self.arun(tasks, on_result)
            finally:
                await self.aclose_backend()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        # Called from inside a running loop (a notebook): run on a private loop in a thread.
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["r"] = asyncio.run(main())
            except BaseException as e:  # re-raised in the caller's thread
                box["e"] = e

        th = threading.Thread(target=target, name="llm-client-run")
        th.start()
        th.join()
        if "e" in box:
            raise box["e"]
        return box["r"]

    run_sync = run

    async def arun(
        self, tasks: Iterable[LLMTask], on_result: Callable[[LLMResult], None] | None = None
    ) -> list[LLMResult]:
        """All tasks, results in input order. At most `concurrency` HTTP requests in flight;
        tasks are started through a bounded window so that 1M tasks do not mean 1M coroutines."""
        task_list = list(tasks)
        results: list[LLMResult | None] = [None] * len(task_list)
        window = asyncio.Semaphore(max(64, 4 * self.settings.concurrency))
        pending: set[asyncio.Future[None]] = set()
        errors: list[BaseException] = []

        async def one(i: int, t: LLMTask) -> None:
            try:
                r = await self.acomplete(t)
                results[i] = r
                if on_result is not None:
                    on_result(r)
            finally:
                window.release()

        def done(f: asyncio.Future[None]) -> None:
            pending.discard(f)
            if not f.cancelled() and f.exception() is not None:
                errors.append(f.exception())  # type: ignore[arg-type]

        try:
            for i, t in enumerate(task_list):
                await window.acquire()
                if errors:
                    window.release()
                    break
                f = asyncio.ensure_future(one(i, t))
                pending.add(f)
                f.add_done_callback(done)
            if pending:
                await asyncio.gather(*list(pending), return_exceptions=True)
        finally:
            for f in list(pending):
                f.cancel()
            if self.cache is not None:
                self.cache.flush()
        if errors:  # an on_result callback failed (e.g. the stage could not write): surface it
            raise errors[0]
        return results  # type: ignore[return-value]

    async def acomplete(self, task: LLMTask) -> LLMResult:
        """One task. Never raises (except cancellation): failures end ok=False with a reason."""
        self.totals.requests += 1
        acc = _Acc()
        try:
            return await self._process(task, acc)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug must not kill the run; keep the row with the reason
            log.exception("LLM task %s failed unexpectedly", task.key_id)
            return self._fail(task, "", f"internal error: {type(e).__name__}: {e}", acc, Usage())

    def estimate(self, tasks: Iterable[LLMTask]) -> dict[str, Any]:
        """Dry run: calls, tokens and cost of the tasks not in the cache (cached ones are free).
        Prompt tokens: tiktoken if installed, else chars/4. Completion tokens: the prompt's
        `expected_output_tokens` hint, else half the max-tokens parameter (256 if unset).
        `batch_cost_usd`: the same calls through the Batch API (the models' `batch_discount`)."""
        rows = []
        for t in tasks:
            rows.append((t, *request_of(t)))
        cached_keys = self.cache.contains_many(k for _, _, k in rows) if self.cache is not None else set()
        seen: set[str] = set()
        out = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "batch_cost_usd": 0.0,
               "cached": 0}
        for t, body, key in rows:
            if key in cached_keys or key in seen:
                out["cached"] += 1
                continue
            seen.add(key)
            pt = estimate_prompt_tokens(body["messages"], t.model, exact=True)
            ct = t.prompt.expected_output_tokens or (max_output_tokens(body) // 2) or 256
            out["calls"] += 1
            out["prompt_tokens"] += pt
            out["completion_tokens"] += ct
            out["cost_usd"] += self.prices.cost(t.model, pt, ct)
            out["batch_cost_usd"] += self.prices.cost(t.model, pt, ct, batch=True)
        return out

    async def aclose_backend(self) -> None:
        """Close the backend's connections (call at the end of the loop that used `arun`)."""
        closer = getattr(self.backend, "aclose", None)
        if closer is not None:
            await closer()

    async def aclose(self) -> None:
        await self.aclose_backend()
        self.close()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _fail(
        self, task: LLMTask, key: str, error: str, acc: _Acc, usage: Usage, raw_text: str | None = None
    ) -> LLMResult:
        self.totals.failures += 1
        return LLMResult(
            key_id=task.key_id, ok=False, value=None, error=error, usage=usage, cost_usd=acc.cost,
            cached=False, http_calls=acc.calls, cache_key=key, raw_text=raw_text,
        )

    async def _process(self, task: LLMTask, acc: _Acc, fresh: bool = False) -> LLMResult:
        try:
            body, key = request_of(task)
        except InfirError as e:
            return self._fail(task, "", str(e), acc, Usage())
        try:
            response, cached = await self._fetch(body, key, task, acc, fresh)
        except _RequestFailed as e:
            return self._fail(task, key, e.reason, acc, Usage())
        usage = Usage.of(response)
        batch = bool(response.get(BATCH_FIELD))
        outcome = parse_response(response, task.output_model)
        repaired = False
        if outcome.error is not None and self.settings.repair:
            self.totals.repairs += 1
            rbody = repair_body(body, outcome, task.output_model)
            try:
                rresponse, rcached = await self._fetch(rbody, cache_key(rbody), task, acc, fresh)
            except _RequestFailed as e:
                reason = e.reason if e.reason == BUDGET_EXHAUSTED else f"{outcome.error}; repair request failed: {e.reason}"
                return self._fail(task, key, reason, acc, usage, outcome.text)
            usage = usage + Usage.of(rresponse)
            second = parse_response(rresponse, task.output_model)
            if second.error is not None:
                if cached and rcached and self._can_ask_again(fresh):
                    return await self._process(task, acc, fresh=True)
                return self._fail(
                    task, key, f"invalid after one repair: {second.error} (first answer: {outcome.error})",
                    acc, usage, second.text,
                )
            outcome, cached, repaired = second, cached and rcached, True
            batch = batch and bool(rresponse.get(BATCH_FIELD))
        if outcome.error is not None:
            if cached and self._can_ask_again(fresh):
                return await self._process(task, acc, fresh=True)
            return self._fail(task, key, outcome.error, acc, usage, outcome.text)
        return LLMResult(
            key_id=task.key_id, ok=True, value=outcome.value, error=None, usage=usage, cost_usd=acc.cost,
            cached=cached, http_calls=acc.calls, cache_key=key, raw_text=outcome.text, repaired=repaired,
            batch=batch,
        )

    def _can_ask_again(self, fresh: bool) -> bool:
        """A task whose answers, all from the cache, still fail to parse is asked once more past the
        cache: replaying an earlier run's bad answer would make its failure permanent, and a rerun
        is how failed rows are retried. Answers that parse (with today's parser) are never re-asked."""
        return not fresh and getattr(self.backend, "can_resend", True)

    def _price(self, body: dict[str, Any], response: dict[str, Any]) -> float:
        u = Usage.of(response)
        return self.prices.cost(
            body["model"], u.prompt_tokens, u.completion_tokens, u.cached_tokens,
            batch=bool(response.get(BATCH_FIELD)), response_model=response.get("model"),
        )

    async def _fetch(
        self, body: dict[str, Any], key: str, task: LLMTask, acc: _Acc, fresh: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """(response, from_cache): cache, then an identical request already in flight, then HTTP.
        `fresh`: skip the cache lookup (the new response replaces the cached one)."""
        if self.cache is not None and not fresh:
            hit = self.cache.get(key)
            if hit is not None:
                self.totals.cache_hits += 1
                self.totals.saved_cost_usd += self._price(body, hit)
                return hit, True
        other = self._inflight.get(key)
        if other is not None:
            response = await asyncio.shield(other)
            self.totals.cache_hits += 1
            return response, True
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        claimed = False
        try:
            if self.cache is not None and not fresh:
                # Another process on this cache may be sending the same request: wait for its answer.
                try:
                    hit = await self.cache.claim_or_wait(key, self.settings.deadline_s + self.settings.request_timeout_s)
                except (sqlite3.Error, OSError) as e:  # as for `put`: a cache we cannot write stops the sending
                    self.stop_reason = f"cache write failed: {e}"
                    raise _RequestFailed(self.stop_reason) from None
                if hit is not None:
                    self.totals.cache_hits += 1
                    self.totals.saved_cost_usd += self._price(body, hit)
                    fut.set_result(hit)
                    return hit, True
                claimed = True
            response = await self._send(body, task, acc)
        except _RequestFailed as e:
            if claimed:
                self.cache.release(key)
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException:
            if claimed:
                self.cache.release(key)
            fut.cancel()
            raise
        finally:
            self._inflight.pop(key, None)
        if self.cache is not None:
            try:
                self.cache.put(key, response, response.get("model") or body["model"])
            except (sqlite3.Error, OSError) as e:
                # Paying for calls we cannot keep is worse than stopping: stop sending.
                self.stop_reason = f"cache write failed: {e}"
                log.error("LLM cache %s: write failed (%s); no further requests are sent", self.cache.path, e)
        fut.set_result(response)
        return response, False

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem, self._sem_loop = asyncio.Semaphore(self.settings.concurrency), loop
        return self._sem

    def _check_can_send(self) -> None:
        if self.stop_reason is not None:
            raise _RequestFailed(self.stop_reason)
        cap = self.settings.max_cost_usd
        if cap is not None and self.totals.cost_usd >= cap:
            if not self.budget_exhausted:
                log.warning("LLM budget of $%.4f reached: no further requests are sent", cap)
            self.budget_exhausted = True
            raise _RequestFailed(BUDGET_EXHAUSTED)

    async def _send(self, body: dict[str, Any], task: LLMTask, acc: _Acc) -> dict[str, Any]:
        """HTTP with retries: the only retry layer (the SDK runs with max_retries=0).

        Retries what the backend marks retryable, up to `max_attempts` attempts and `deadline_s`
        seconds. Wait: the server's hint (Retry-After & co) plus a little jitter, else exponential
        backoff with full jitter. A 429 hint pauses the whole client (the limiter), not just this
        request. Non-retryable errors (400, 422, ...) fail at once; fatal ones (401, 403, 404,
        insufficient_quota) also stop the client from sending anything more."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # starts at the first attempt: queueing is not the request's time
        tokens = estimate_prompt_tokens(body["messages"]) + max_output_tokens(body)
        sem = self._semaphore()
        attempt = 0
        while True:
            self._check_can_send()
            attempt += 1
            async with sem:
                budget_s = (deadline - loop.time()) if deadline is not None else s.deadline_s
                if self.limiter.pause_remaining() > budget_s:
                    # e.g. a daily quota: Retry-After of hours. Fail now; a rerun resumes from cache.
                    raise _RequestFailed(
                        f"deadline of {s.deadline_s:g}s exceeded: the server asked to wait "
                        f"{self.limiter.pause_remaining():.0f}s (rate limit)"
                    )
                await self.limiter.acquire(tokens)
                self._check_can_send()
                if deadline is None:
                    deadline = loop.time() + s.deadline_s
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _RequestFailed(f"deadline of {s.deadline_s:g}s exceeded after {attempt - 1} attempt(s)")
                acc.calls += 1
                self.totals.http_calls += 1
                try:
                    response = await asyncio.wait_for(self.backend.complete(body, task), remaining)
                except BackendError as e:
                    err = e
                except asyncio.TimeoutError:
                    raise _RequestFailed(f"deadline of {s.deadline_s:g}s exceeded after {attempt} attempt(s)") from None
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as e:  # a backend bug: not retried
                    raise _RequestFailed(f"backend error: {type(e).__name__}: {e}") from None
                else:
                    cost = self._price(body, response)
                    u = Usage.of(response)
                    t = self.totals
                    t.prompt_tokens += u.prompt_tokens
                    t.completion_tokens += u.completion_tokens
                    t.cached_tokens += u.cached_tokens
                    t.cost_usd += cost
                    acc.cost += cost
                    return response
            # -- the attempt failed (semaphore released: waiting holds no slot)
            if err.fatal:
                if self.stop_reason is None:
                    self.stop_reason = f"aborted: {err}"
                    log.error("LLM backend: %s; no further requests are sent", err)
                raise _RequestFailed(str(err))
            if not err.retryable:
                raise _RequestFailed(str(err))
            if attempt >= s.max_attempts:
                raise _RequestFailed(f"gave up after {attempt} attempts: {err}")
            if err.retry_after is not None:
                wait = err.retry_after + self._rng.uniform(0, min(1.0, 0.1 * err.retry_after))
                if err.status == 429 and err.retry_after > 0:
                    self.limiter.pause(wait)
            else:
                wait = backoff_delay(attempt, s.backoff_base_s, s.backoff_max_s, self._rng)
            if deadline is not None and loop.time() + wait > deadline:
                raise _RequestFailed(
                    f"deadline of {s.deadline_s:g}s exceeded after {attempt} attempt(s) (next wait {wait:.1f}s): {err}"
                )
            self.totals.retries += 1
            log.debug("LLM task %s: %s; retry %d/%d in %.2fs", task.key_id, err, attempt, s.max_attempts - 1, wait)
            await asyncio.sleep(wait)


# ------------------------------------------------------------------------------------------------


def make_client(
    settings: LLMSettings,
    backend: Backend | None = None,
    *,
    cache: Cache | None | bool = True,
    prices: PriceTable | None = None,
) -> LLMClient:
    """Build the client from settings: cache at settings.cache_path (cache=False: none),
    prices from settings.price_file, backend from settings.backend unless given."""
    if backend is None:
        if settings.backend == "openai":
            from pipeline.llm.openai_backend import OpenAIBackend

            backend = OpenAIBackend(settings)
        else:
            import inspect

            from pipeline.llm.offline import OfflineBackend  # written by the lead

            try:
                takes_args = bool(inspect.signature(OfflineBackend).parameters)
            except (TypeError, ValueError):
                takes_args = False
            backend = OfflineBackend(settings) if takes_args else OfflineBackend()
    if cache is True:
        cache_obj = Cache(settings.cache_path) if settings.cache_path is not None else None
    elif cache is False:
        cache_obj = None
    else:
        cache_obj = cache
    return LLMClient(settings, backend, cache_obj, prices or PriceTable.load(settings.price_file))


__all__ = [
    "BATCH_FIELD",
    "BUDGET_EXHAUSTED",
    "Backend",
    "BackendError",
    "CACHE_KEY_VERSION",
    "LLMClient",
    "LLMResult",
    "LLMTask",
    "PARSER_VERSION",
    "ParseOutcome",
    "Totals",
    "Usage",
    "build_body",
    "cache_key",
    "canonical_json",
    "default_params",
    "estimate_prompt_tokens",
    "is_reasoning_model",
    "make_client",
    "parse_response",
    "repair_body",
    "request_of",
    "response_format_for",
    "strict_json_schema",
]
