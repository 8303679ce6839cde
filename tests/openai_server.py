"""A local OpenAI-compatible test server (stdlib only): POST /v1/chat/completions.

    with FakeOpenAIServer(latency=0.05, fault_rate=0.3, seed=1) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="sk-test")
        ...
        srv.count, srv.counts["/v1/chat/completions"], srv.requests[0].body, srv.requests[0].headers

    python tests/openai_server.py --port 0 --latency 0.1     # prints "READY <base_url>", serves until killed

Features
- default responder: a JSON object valid for the request's `response_format` json_schema, filled
  deterministically from a hash of the conversation up to its first user message (so a repair
  conversation gets the same answer as the original question);
  `responder(body) -> str | dict(content=..., finish_reason=..., refusal=...) | None` overrides it.
- a responder's dict may carry `logprobs` (the `logprobs.content` token list, e.g. from
  `logprob_tokens(content, {char offset: logprob})`); a request with `logprobs: true` gets them
  (default: the content's tokens, each certain), as the API returns them only when asked.
- `usage`: fixed (prompt, completion[, cached, reasoning]) tokens, or a function of the body giving
  them; default: the server's own count (`openai_limits.text_tokens`: words x 1.3 plus punctuation,
  near OpenAI's average for English), NOT the client's chars/4 fallback, so that an estimate checked
  against this bill is checked against another rule, as against the real tokenizer.
  `reasoning_tokens`: hidden reasoning tokens added to a reasoning model's answers (an int, or a
  function of the body such as `seeded_reasoning(median, sigma)`: lognormal, drawn from the
  conversation so a resent request bills the same). `prefix_cache=True` reports `cached_tokens`
  as OpenAI's prompt caching would (the longest prefix >= 1,024 tokens, in 128-token steps, that an
  earlier request of the same model began with).
- latency (seconds per request), a thread-safe request counter (total and per path), recorded
  requests (body, headers, arrival/finish times, status, fault), `answered()` (chat answers written).
- The bill: every answer the server made (HTTP 200 with a usage, chat and batch lines alike) is in
  `bills` (model, tokens, batch or not), whether or not the client lived to read it, as the service
  bills it; `billed_usd(price)` prices them (e.g. `PriceTable.load().cost`).
- injected faults, per request, from `fault_fn(n, body)`, else `script[n]`, else a seeded RNG
  (`fault_rate`, `fault_kinds`, `seed`; request n's draw depends only on (seed, n)):
  "429" (Retry-After: `retry_after`), "500", "503", "400", "401" (echoes the bearer token, like a
  careless server), "drop" (socket closed, no response), "timeout" (sleeps `timeout_sleep` s),
  "malformed" (content not JSON), "schema" (JSON violating the schema), "length" (truncated,
  finish_reason "length"), "refusal", "empty" (no choices).
- routes are a dict {(method, path): handler(server, request) -> Reply}; a path segment in braces
  ("/v1/files/{id}") matches any segment and lands in `request.params`. A POST handler with
  `accepts_raw = True` gets non-JSON bodies (multipart uploads) in `request.raw`.
- Files and Batch API (registered in `routes`): POST /v1/files (multipart upload), GET
  /v1/files/{id}, GET /v1/files/{id}/content; POST /v1/batches, GET /v1/batches (list), GET
  /v1/batches/{id}, POST /v1/batches/{id}/cancel. A batch goes validating -> in_progress ->
  completed after `batch_polls` retrieves and `batch_seconds` seconds, and stays in_progress while
  `hold_batches()` is in force (until `release_batches()`). Its lines are answered by the SAME code
  as the chat endpoint (`answer`: responder, usage, content faults), so a batch run and an online run
  get identical answers. Per-line faults come from `batch_fault_fn(batch_index, custom_id, body)`,
  else a seeded RNG (`batch_fault_rate`, `batch_fault_kinds`; the draw depends on (seed, batch
  index, custom_id), so a resubmitted line draws again): a chat fault kind ("500", "429", "400",
  "schema", "malformed", ...) answers the line as the chat endpoint would ("drop"/"timeout" as 500),
  non-200 lines going to the error file (or to the output file with `batch_errors_in_output`);
  "expire" leaves the line unanswered and the batch ends "expired" with a `batch_expired` entry in
  the error file. `batch_fail_fn(batch_index) -> message | None` fails a whole batch at validation.
  Validation also fails a batch over `batch_max_requests` lines, with mixed models, duplicate
  custom_ids or a url other than its endpoint; an upload over `batch_max_bytes` is refused (400).
  Enqueued-token limit (`batch_queue_tokens`: an int for every model, or {model: tokens}; None: no
  limit), as the real service applies it: a batch's tokens are its lines' prompt tokens, counted as
  this server bills them (`usage`, else `prompt_tokens`); at validation, a batch whose tokens
  plus those of the model's batches already queued (validated, not yet completed / failed / expired
  / cancelled) plus `batch_queue_external[model]` (tokens another process holds) exceed the limit
  ends "failed" with `errors.data[0].code = "token_limit_exceeded"` and the service's message
  ("Enqueued token limit reached for <model> in organization org-test. Limit: N enqueued tokens.
  ..."). `batch_queue_peak[model]` records the most tokens queued at once, `token_limit_failures`
  the batches refused. A batch is validated at its `batch_validating_polls`-th poll (an int, or a
  function of the batch index; default 1).
  Counters: `file_uploads`, `batch_creations`, `batch_cancels`; `batch_inputs()` gives every
  created batch's input lines in creation order.
- `response_formats=("text", "json_object")` answers like llama-cpp-python's server (0.3.x), which
  takes only those `response_format` types (json_object with a `schema`, enforced by grammar): a
  request with any other type (our default `json_schema`) gets its HTTP 500 (`llama_cpp_refusal`);
  a json_object request with a schema gets a JSON object valid for it. None (default): every type.
- `service=Service(...)` (tests/openai_limits.py) adds OpenAI's per-model RPM/TPM limits with the
  real `x-ratelimit-*` headers and 429 bodies, a reasoning-latency tail, occasional 5xx and a time
  scale to the chat path, with counters (`service.tally`; GET /v1/service/stats). CLI: `--limit
  MODEL=RPM,TPM`, `--time-scale`, `--reasoning-latency MEDIAN,SIGMA`, `--error-rate`, ...
- `server="thread"` (ThreadingHTTPServer, default) or `server="asyncio"` (one event loop thread,
  cheaper per request; used by the benchmark so it measures clients, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import hashlib
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from openai_limits import Service, add_arguments, prompt_tokens, service_from_args, text_tokens

RETRYABLE_FAULTS = ("429", "500", "503", "drop", "timeout")
CONTENT_FAULTS = ("malformed", "schema", "length")
ALL_FAULTS = RETRYABLE_FAULTS + CONTENT_FAULTS + ("400", "401", "refusal", "empty")

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
BATCH_ONLY_FAULTS = ("expire",)
BATCH_ENDPOINTS = ("/v1/chat/completions",)
BATCH_TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class Recorded:
    n: int
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    arrived: float  # time.monotonic()
    replying: float | None = None  # just before the first byte of the reply (or the drop)
    finished: float | None = None  # after the reply was written
    status: int | None = None
    fault: str | None = None
    raw: bytes | None = None  # the body when it is not JSON (multipart uploads)
    params: dict[str, str] = field(default_factory=dict)  # {name} segments of the matched route


@dataclass
class Bill:
    """One answer the service charges for."""

    n: int
    model: str
    prompt: int
    completion: int  # reasoning included, as usage.completion_tokens
    cached: int
    reasoning: int
    batch: bool
    body: Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the socket without answering
    sleep: float = 0.0  # extra delay before answering (timeouts)
    raw: bytes | None = None  # sent as is instead of JSON (file downloads)
    content_type: str = "application/json"

    def payload(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.body).encode("utf-8")


# -- deterministic fake answers ----------------------------------------------------------------


def _h(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def data_block(text: str, label: str) -> str:
    """The (escaped) content of the prompt's `<data label="LABEL">` block in a message."""
    tag = f'<data label="{label}">'
    start = text.index(tag) + len(tag) + 1
    return text[start : text.index("</data>", start)].rstrip("\n")


def split_data_blocks(text: str) -> tuple[str, list[str]]:
    """A message cut into what lies outside every `<data>` block and the blocks' contents."""
    outside, inside, rest = [], [], text
    while "<data label=" in rest:
        head, rest = rest.split("<data label=", 1)
        outside.append(head)
        block, rest = rest.split("</data>", 1)
        inside.append(block.split(">", 1)[1])
    outside.append(rest)
    return "".join(outside), inside


def conversation_seed(body: dict[str, Any]) -> str:
    """Hash of the messages up to and including the first user message."""
    msgs = body.get("messages") or []
    base = []
    for m in msgs:
        base.append(f"{m.get('role')}:{m.get('content')}")
        if m.get("role") == "user":
            break
    return _h(str(body.get("model")), *base)


def fake_value(schema: dict[str, Any], root: dict[str, Any], seed: str, path: str = "$") -> Any:
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        return fake_value(node, root, seed, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return fake_value(options[0], root, seed, path)
    if "allOf" in schema:
        return fake_value(schema["allOf"][0], root, seed, path)
    h = _h(seed, path)
    if "enum" in schema:
        return schema["enum"][int(h[:8], 16) % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or "properties" in schema:
        return {k: fake_value(v, root, seed, f"{path}.{k}") for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        n = max(int(schema.get("minItems", 0)), 2)
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        return [fake_value(schema.get("items") or {"type": "string"}, root, seed, f"{path}[{i}]") for i in range(n)]
    if t == "integer":
        return int(h[:6], 16) % 100
    if t == "number":
        return (int(h[:6], 16) % 1000) / 7.0
    if t == "boolean":
        return int(h[0], 16) % 2 == 0
    if t == "null":
        return None
    leaf = path.rsplit(".", 1)[-1]
    return f"{leaf}-{h[:10]}"


def default_content(body: dict[str, Any]) -> str:
    seed = conversation_seed(body)
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if rf.get("type") == "json_schema" and isinstance(schema, dict):
        return json.dumps(fake_value(schema, schema, seed), ensure_ascii=False)
    if rf.get("type") == "json_object" and isinstance(rf.get("schema"), dict):  # llama-cpp-python's form
        return json.dumps(fake_value(rf["schema"], rf["schema"], seed), ensure_ascii=False)
    if rf.get("type") == "json_object":
        return json.dumps({"answer": f"answer-{seed[:10]}"})
    return f"answer-{seed[:10]}"


def completion(body: dict[str, Any], n: int, content: str | None, finish_reason: str = "stop",
               refusal: str | None = None, usage: tuple[int, ...] | None = None) -> dict[str, Any]:
    """`usage`: (prompt, completion[, cached, reasoning]) tokens; None: counted from the text."""
    if usage is None:
        usage = (prompt_tokens(body), max(1, text_tokens(content or "")))
    cached, reasoning = (tuple(usage[2:4]) + (0, 0))[:2]
    return {
        "id": f"chatcmpl-test-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "unknown",
        "system_fingerprint": "fp_test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


def seeded_reasoning(median: float, sigma: float, seed: int = 0, low: int = 1, high: int = 30_000
                     ) -> Callable[[dict[str, Any]], int]:
    """Hidden reasoning tokens drawn from lognormal(median, sigma), clipped to [low, high], for
    `reasoning_tokens=`. The draw depends on (seed, the conversation), so a request sent again
    (after a kill, a retry) bills what it billed before: resumed runs stay byte-identical."""

    def draw(body: dict[str, Any]) -> int:
        rng = random.Random(f"{seed}:reasoning:{_h(json.dumps(body.get('messages'), sort_keys=True))}")
        return int(min(high, max(low, round(median * math.exp(sigma * rng.gauss(0.0, 1.0))))))

    return draw


_TOKEN_RE = re.compile(r"\w+|\s+|[^\w\s]")


def logprob_tokens(content: str, logprob_at: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """`content` cut into tokens (words, spaces, single punctuation: concatenated they give the
    content back) in the OpenAI `logprobs.content` format. A token starting at char offset k gets
    `logprob_at[k]` (default 0.0: certain), and its `top_logprobs` hold it plus the complement."""
    out, pos = [], 0
    for tok in _TOKEN_RE.findall(content):
        lp = (logprob_at or {}).get(pos, 0.0)
        rest = math.log(max(1e-12, 1.0 - math.exp(lp)))
        top = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
        if tok in ("true", "false"):
            other = "false" if tok == "true" else "true"
            top.append({"token": other, "logprob": rest, "bytes": list(other.encode())})
        out.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": top})
        pos += len(tok)
    return out


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error",
           headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers or {})


# -- what the service refuses of a model family (the chat path checks it before answering) -------
# The server's own table, written from OpenAI's answers (not from pipeline.llm.families, which it
# tests): reasoning models take reasoning_effort (these values) and max_completion_tokens, and answer
# 400 to sampling parameters, logprobs and max_tokens.
_EFFORTS = ((r"^gpt-5-chat", None), (r"^gpt-5\.1", ("none", "low", "medium", "high")), (r"^gpt-5-pro", ("high",)),
            (r"^gpt-5", ("minimal", "low", "medium", "high")), (r"^o\d", ("low", "medium", "high")))
_REASONING_REFUSES = ("temperature", "top_p", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                      "max_tokens")


def _unsupported(message: str, param: str, code: str) -> Reply:
    return Reply(400, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})


def unsupported_by_model(body: dict[str, Any]) -> Reply | None:
    """The service's 400 for a parameter or reasoning_effort value the model does not take (None: fine)."""
    model = str(body.get("model") or "").rsplit("/", 1)[-1].lower()
    efforts = next((e for pattern, e in _EFFORTS if re.match(pattern, model)), None)
    if efforts is None:
        return None  # not a reasoning model
    for param in _REASONING_REFUSES:
        if body.get(param) is not None:
            hint = " Use 'max_completion_tokens' instead." if param == "max_tokens" else ""
            return _unsupported(f"Unsupported parameter: '{param}' is not supported with this model.{hint}", param,
                                "unsupported_parameter")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in efforts:
        quoted = [f"'{e}'" for e in efforts]
        last = ", and " if len(quoted) > 2 else " and "
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + last + quoted[-1]
        return _unsupported(f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this model. "
                            f"Supported values are: {listed}.", "reasoning_effort", "unsupported_value")
    return None


# -- llama-cpp-python's server (option `response_formats`) ---------------------------------------
# Its request model types response_format as {"type": "text" | "json_object", "schema"?}; FastAPI's
# validation error is caught by its route handler and answered as HTTP 500 internal_server_error
# with str(error) as the message (llama_cpp/server/errors.py). The message below is what 0.3.36
# answered to our json_schema form (its site-packages path shortened).
LLAMA_CPP_REFUSAL = (
    "1 validation error:\n  {{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': '{kind}', "
    "'ctx': {{'expected': \"'text' or 'json_object'\"}}}}\n\n"
    "  File \"/venv/lib/python3.11/site-packages/llama_cpp/server/app.py\", line 376, in create_chat_completion\n"
    "    POST /v1/chat/completions"
)


def llama_cpp_refusal(body: dict[str, Any], accepted: tuple[str, ...] | None) -> Reply | None:
    """llama-cpp-python's HTTP 500 for a response_format type it does not take (None: fine)."""
    rf = body.get("response_format")
    kind = rf.get("type") if isinstance(rf, dict) else None
    if accepted is None or rf is None or kind in accepted:
        return None
    return Reply(500, {"error": {"message": LLAMA_CPP_REFUSAL.format(kind=kind), "type": "internal_server_error",
                                 "param": None, "code": None}})


# -- the server ----------------------------------------------------------------------------------


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        responder: Callable[[dict[str, Any]], Any] | None = None,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = RETRYABLE_FAULTS + CONTENT_FAULTS,
        seed: int = 0,
        script: list[str | None] | None = None,
        fault_fn: Callable[[int, dict[str, Any]], str | None] | None = None,
        retry_after: str | None = "0",
        timeout_sleep: float = 5.0,
        usage: tuple[int, ...] | Callable[[dict[str, Any]], tuple[int, ...]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        server: str = "thread",
        record: bool = True,
        batch_polls: int = 2,
        batch_seconds: float = 0.0,
        hold_batches: bool = False,
        batch_fault_fn: Callable[[int, str, dict[str, Any]], str | None] | None = None,
        batch_fault_rate: float = 0.0,
        batch_fault_kinds: tuple[str, ...] = ("500", "expire"),
        batch_errors_in_output: bool = False,
        batch_fail_fn: Callable[[int], str | None] | None = None,
        batch_max_requests: int = 50_000,
        batch_max_bytes: int = 200 * 1024 * 1024,
        batch_queue_tokens: int | dict[str, int] | None = None,
        batch_validating_polls: int | Callable[[int], int] = 1,
        reasoning_tokens: int | Callable[[dict[str, Any]], int] = 0,
        prefix_cache: bool = False,
        response_formats: tuple[str, ...] | None = None,
        service: Service | None = None,
    ):
        unknown = set(fault_kinds) - set(ALL_FAULTS)
        unknown |= set(batch_fault_kinds) - set(ALL_FAULTS + BATCH_ONLY_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.responder = responder
        self.latency = latency
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.seed = seed
        self.script = list(script or [])
        self.fault_fn = fault_fn
        self.retry_after = retry_after
        self.timeout_sleep = timeout_sleep
        self.usage = usage
        # Hidden reasoning tokens billed to a reasoning model's answers (o1/o3/o4/gpt-5), as the real
        # API reports them: added to completion_tokens and completion_tokens_details.reasoning_tokens.
        self.reasoning_tokens = reasoning_tokens
        self.host = host
        self.port = port
        self.kind = server
        self.record = record
        self.routes: dict[tuple[str, str], Callable[[FakeOpenAIServer, Recorded], Reply]] = {
            ("POST", p): FakeOpenAIServer.chat_completions for p in CHAT_PATHS
        }
        self.routes.update(BATCH_ROUTES)
        self.batch_polls = batch_polls
        self.batch_seconds = batch_seconds
        self.batch_fault_fn = batch_fault_fn
        self.batch_fault_rate = batch_fault_rate
        self.batch_fault_kinds = tuple(batch_fault_kinds)
        self.batch_errors_in_output = batch_errors_in_output
        self.batch_fail_fn = batch_fail_fn
        self.batch_max_requests = batch_max_requests
        self.batch_max_bytes = batch_max_bytes
        # The Batch API's enqueued-token limit per model (an int for every model, or {model: limit};
        # a model missing from the table is not limited). See `_queue_check`.
        self.batch_queue_tokens = batch_queue_tokens
        # Polls a batch stays "validating" before it is queued or refused (the service takes a
        # while): an int, or a function of the batch's index.
        self.batch_validating_polls = batch_validating_polls
        self.batch_queue_external: dict[str, int] = {}  # model -> tokens another process holds queued
        self.batch_queue_peak: dict[str, int] = {}  # model -> most tokens ever enqueued at once
        self.token_limit_failures = 0  # batches failed with token_limit_exceeded
        # Provider prompt caching, as OpenAI documents it: a prompt whose first >= 1,024 tokens
        # repeat an earlier request's (same model) is billed with the longest such prefix, in
        # steps of 128 tokens, as `cached_tokens`. Tokens are counted as chars/4 here.
        self.prefix_cache = prefix_cache
        self.response_formats = response_formats  # None: every response_format type (llama_cpp_refusal)
        # OpenAI's rate limits, latency tail, 5xx and time scale on the chat path (tests/openai_limits.py).
        self.service = service
        if service is not None:
            self.routes[("GET", "/v1/service/stats")] = lambda srv, rec: Reply(200, srv.service.stats())
        self._prefixes: set[str] = set()
        self.files: dict[str, dict[str, Any]] = {}  # id -> file object + "_content" bytes
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object + private "_" fields
        self.file_uploads = 0
        self.batch_creations = 0
        self.batch_cancels = 0
        self._held = threading.Event()
        if hold_batches:
            self._held.set()
        self._batch_lock = threading.RLock()
        self._ids = 0
        self._batch_lines = 0
        self.requests: list[Recorded] = []
        self.bills: list[Bill] = []  # every answer made, read or not by the client (see `billed_usd`)
        self.count = 0
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    # -- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        if self.kind == "thread":
            self._start_threading()
        elif self.kind == "asyncio":
            self._start_asyncio()
        else:
            raise ValueError(f"server kind {self.kind!r}")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._loop is not None:
            loop = self._loop

            async def shutdown() -> None:
                me = asyncio.current_task()
                rest = [t for t in asyncio.all_tasks() if t is not me]
                for t in rest:
                    t.cancel()
                await asyncio.gather(*rest, return_exceptions=True)
                loop.stop()

            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and counts (files and batches are kept)."""
        with self._lock:
            self.requests.clear()
            self.count = 0
            self.counts.clear()

    def wait_for_count(self, n: int, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count >= n:
                return True
            time.sleep(0.005)
        return False

    def answered(self) -> int:
        """Chat answers (HTTP 200) written out to their client so far."""
        with self._lock:
            return sum(1 for r in self.requests if r.path in CHAT_PATHS and r.status == 200 and r.finished)

    def billed_usd(self, price: Callable[..., float]) -> float:
        """What the service charges for every answer it made: `price(model, prompt, completion,
        cached, batch=...)` summed (pipeline.llm.pricing.PriceTable.cost has that signature)."""
        with self._lock:
            bills = list(self.bills)
        return sum(price(b.model, b.prompt, b.completion, b.cached, batch=b.batch) for b in bills)

    def _charge(self, n: int, body: dict[str, Any], reply: Reply, batch: bool) -> None:
        usage = reply.body.get("usage") if reply.status == 200 and isinstance(reply.body, dict) else None
        if not usage:
            return
        bill = Bill(n, str(body.get("model") or ""), int(usage["prompt_tokens"]), int(usage["completion_tokens"]),
                    int(usage["prompt_tokens_details"]["cached_tokens"]),
                    int(usage["completion_tokens_details"]["reasoning_tokens"]), batch, body)
        with self._lock:
            self.bills.append(bill)

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path in CHAT_PATHS]

    # -- request handling (shared by both server kinds)
    def _register(self, method: str, path: str, raw: bytes, headers: dict[str, str]) -> Recorded:
        try:
            body = json.loads(raw) if raw else None
            kept = None
        except ValueError:
            body, kept = None, raw
        with self._lock:
            n = self.count
            self.count += 1
            self.counts[path] = self.counts.get(path, 0) + 1
            rec = Recorded(n, method, path, body, headers, time.monotonic(), raw=kept)
            if self.record:
                self.requests.append(rec)
        return rec

    def _route(self, rec: Recorded) -> Callable[[FakeOpenAIServer, Recorded], Reply] | None:
        path = rec.path.split("?", 1)[0]
        route = self.routes.get((rec.method, path))
        if route is not None:
            return route
        parts = path.split("/")
        for (method, pattern), handler in self.routes.items():
            if method != rec.method or "{" not in pattern:
                continue
            pparts = pattern.split("/")
            if len(pparts) != len(parts):
                continue
            params = {}
            for want, got in zip(pparts, parts):
                if want.startswith("{") and want.endswith("}"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                rec.params = params
                return handler
        return None

    def handle(self, rec: Recorded) -> Reply:
        route = self._route(rec)
        if route is None:
            return _error(404, f"no route {rec.method} {rec.path}", "not_found")
        if not isinstance(rec.body, dict) and rec.method == "POST" and not getattr(route, "accepts_raw", False):
            return _error(400, "body is not a JSON object", "invalid_json")
        return route(self, rec)

    def pick_fault(self, n: int, body: dict[str, Any]) -> str | None:
        if self.fault_fn is not None:
            return self.fault_fn(n, body)
        if n < len(self.script):
            return self.script[n]
        if self.fault_rate > 0:
            rng = random.Random(f"{self.seed}:{n}")
            if rng.random() < self.fault_rate:
                return rng.choice(self.fault_kinds)
        return None

    def chat_completions(self, rec: Recorded) -> Reply:
        refused = unsupported_by_model(rec.body)  # what the service answers 400 to, before anything
        if refused is not None:
            rec.fault = "unsupported"
            return refused
        refused = llama_cpp_refusal(rec.body, self.response_formats)  # option response_formats
        if refused is not None:
            rec.fault = "response_format"
            return refused
        if self.service is not None:  # rate limits, latency, 5xx, then the faults and answer below
            return self.service.serve(self, rec, _error)
        fault = self.pick_fault(rec.n, rec.body)
        rec.fault = fault
        return self.answer(rec.body, rec.n, fault, rec.headers)

    def answer(self, body: dict[str, Any], n: int, fault: str | None, request_headers: dict[str, str],
               batch: bool = False) -> Reply:
        """The chat endpoint's reply to `body` with `fault` injected (also answers batch lines),
        charged to the bill when it is an answer (whether the client reads it or not)."""
        reply = self._answer(body, n, fault, request_headers)
        self._charge(n, body, reply, batch)
        return reply

    def _answer(self, body: dict[str, Any], n: int, fault: str | None, request_headers: dict[str, str]) -> Reply:
        if fault == "429":
            headers = {"retry-after": self.retry_after} if self.retry_after is not None else {}
            headers.update({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"})
            return _error(429, "Rate limit reached for requests", "rate_limit_exceeded", "requests", headers)
        if fault in ("500", "503"):
            return _error(int(fault), "The server had an error", "server_error", "server_error")
        if fault == "400":
            return _error(400, "Invalid parameter: messages", "invalid_value")
        if fault == "401":
            auth = request_headers.get("authorization", "")
            return _error(401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}.", "invalid_api_key")
        if fault == "drop":
            return Reply(drop=True)
        if fault == "empty":
            resp = completion(body, n, "", usage=self._usage(body))
            resp["choices"] = []
            return Reply(200, resp)
        if fault == "refusal":
            return Reply(200, completion(body, n, None, refusal="I'm sorry, I can't help with that.", usage=self._usage(body)))
        content, finish, refusal, logprobs = self._content(body)
        if fault == "malformed":
            content = "Sure! Here is the JSON: {" + (content or "")[:20]
        elif fault == "schema":
            content = json.dumps({"unexpected": True})
        elif fault == "length":
            content, finish = (content or "")[: max(1, len(content or "") // 2)], "length"
        reply = Reply(200, self._bill_reasoning(body, completion(body, n, content, finish, refusal, usage=self._usage(body))))
        if body.get("logprobs") and content is not None and fault is None:
            # As the API does: token log-probabilities only when the request asks for them.
            reply.body["choices"][0]["logprobs"] = {
                "content": logprobs if logprobs is not None else logprob_tokens(content), "refusal": None}
        if self.prefix_cache:
            usage = reply.body["usage"]
            usage["prompt_tokens_details"]["cached_tokens"] = min(usage["prompt_tokens"], self._cached_prefix(body))
        if fault == "timeout":
            reply.sleep = self.timeout_sleep
        return reply

    def _bill_reasoning(self, body: dict[str, Any], resp: dict[str, Any]) -> dict[str, Any]:
        model = str(body.get("model") or "").rsplit("/", 1)[-1]
        if not re.match(r"^(o\d|gpt-5)", model) or model.startswith("gpt-5-chat"):
            return resp
        extra = self.reasoning_tokens(body) if callable(self.reasoning_tokens) else int(self.reasoning_tokens)
        if not extra:  # none to add (a `usage` function may have set its own)
            return resp
        u = resp["usage"]
        u["completion_tokens"] += extra
        u["total_tokens"] += extra
        u["completion_tokens_details"]["reasoning_tokens"] = extra
        return resp

    def _content(self, body: dict[str, Any]) -> tuple[str | None, str, str | None, list | None]:
        """(content, finish_reason, refusal, logprobs): a responder's dict may carry `logprobs`
        (the `logprobs.content` list, e.g. from `logprob_tokens`), sent when the request asks."""
        if self.responder is not None:
            out = self.responder(body)
            if isinstance(out, dict):
                return out.get("content"), out.get("finish_reason", "stop"), out.get("refusal"), out.get("logprobs")
            if out is not None:
                return str(out), "stop", None, None
        return default_content(body), "stop", None, None

    def _usage(self, body: dict[str, Any]) -> tuple[int, ...] | None:
        return self.usage(body) if callable(self.usage) else self.usage

    def _cached_prefix(self, body: dict[str, Any]) -> int:
        """Tokens of `body`'s prompt an earlier request (same model) already had as its prefix."""
        text = str(body.get("model")) + "\x1f" + "".join(
            f"{m.get('role')}\x1e{m.get('content')}\x1d" for m in body.get("messages") or [])
        step, first = 128 * 4, 1024 * 4  # chars: 128 and 1,024 tokens
        keys = [_h(text[:k]) for k in range(first, len(text) + 1, step)]
        with self._lock:
            hit = max((i for i, k in enumerate(keys) if k in self._prefixes), default=-1)
            self._prefixes.update(keys)
        return 0 if hit < 0 else (first + hit * step) // 4

    # -- Files and Batch API
    def hold_batches(self) -> None:
        """Batches stay in_progress (however often they are polled) until `release_batches()`."""
        self._held.set()

    def release_batches(self) -> None:
        self._held.clear()

    def batch_inputs(self) -> list[list[dict[str, Any]]]:
        """The input lines of every batch created, in creation order."""
        with self._batch_lock:
            ordered = sorted(self.batches.values(), key=lambda b: b["_index"])
            return [list(b["_lines"]) for b in ordered]

    def pick_batch_fault(self, index: int, custom_id: str, body: dict[str, Any]) -> str | None:
        if self.batch_fault_fn is not None:
            return self.batch_fault_fn(index, custom_id, body)
        if self.batch_fault_rate > 0:
            rng = random.Random(f"{self.seed}:batch{index}:{custom_id}")
            if rng.random() < self.batch_fault_rate:
                return rng.choice(self.batch_fault_kinds)
        return None

    def _new_id(self, prefix: str) -> str:
        with self._batch_lock:
            self._ids += 1
            return f"{prefix}-test{self._ids:06d}"

    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        f = {"id": self._new_id("file"), "object": "file", "bytes": len(content), "created_at": int(time.time()),
             "filename": filename, "purpose": purpose, "status": "processed", "_content": content}
        self.files[f["id"]] = f
        return f

    def files_create(self, rec: Recorded) -> Reply:
        ctype = rec.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data") or rec.raw is None:
            return _error(400, "expected a multipart/form-data upload", "invalid_request")
        fields = parse_multipart(rec.raw, ctype)
        if "file" not in fields or "purpose" not in fields:
            return _error(400, "missing 'file' or 'purpose'", "invalid_request")
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode("utf-8")
        if purpose == "batch" and len(content) > self.batch_max_bytes:
            return _error(400, f"File is too large: {len(content)} bytes (limit {self.batch_max_bytes})", "file_too_large")
        with self._batch_lock:
            f = self._store_file(content, filename or "upload", purpose)
            self.file_uploads += 1
        return Reply(200, _public(f))

    files_create.accepts_raw = True  # type: ignore[attr-defined]

    def files_retrieve(self, rec: Recorded) -> Reply:
        f = self.files.get(rec.params["id"])
        if f is None:
            return _error(404, f"No such File object: {rec.params['id']}", "not_found")
        return Reply(200, _public(f))

    def files_content(self, rec: Recorded) -> Reply:
        f = self.files.get(rec.params["id"])
        if f is None:
            return _error(404, f"No such File object: {rec.params['id']}", "not_found")
        return Reply(200, raw=f["_content"], content_type="application/octet-stream")

    def _validate_batch_input(self, content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        for i, raw in enumerate(content.decode("utf-8", errors="replace").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                return lines, {"code": "invalid_json_line", "message": f"line {i} is not JSON"}
            if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
                return lines, {"code": "invalid_request", "message": f"line {i}: no body object"}
            cid = line.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                return lines, {"code": "duplicate_custom_id", "message": f"line {i}: missing or duplicate custom_id"}
            if line.get("method") != "POST" or line.get("url") != endpoint:
                return lines, {"code": "mismatched_endpoint", "message": f"line {i}: url must be {endpoint}"}
            seen.add(cid)
            models.add(str(line["body"].get("model")))
            lines.append(line)
        if len(models) > 1:
            return lines, {"code": "mismatched_model", "message": f"one model per batch file, got {sorted(models)}"}
        if len(lines) > self.batch_max_requests:
            return lines, {"code": "too_many_requests",
                           "message": f"{len(lines)} requests in one batch (limit {self.batch_max_requests})"}
        if not lines:
            return lines, {"code": "empty_file", "message": "the input file has no requests"}
        return lines, None

    def batches_create(self, rec: Recorded) -> Reply:
        body = rec.body
        f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            return _error(400, f"Invalid input_file_id {body.get('input_file_id')!r}", "invalid_request")
        if body.get("endpoint") not in BATCH_ENDPOINTS:
            return _error(400, f"Unsupported endpoint {body.get('endpoint')!r}", "invalid_request")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'", "invalid_request")
        if f["purpose"] != "batch":
            return _error(400, "the input file's purpose is not 'batch'", "invalid_request")
        lines, invalid = self._validate_batch_input(f["_content"], body["endpoint"])
        now = int(time.time())
        with self._batch_lock:
            index = self.batch_creations
            self.batch_creations += 1
            if invalid is None and self.batch_fail_fn is not None:
                msg = self.batch_fail_fn(index)
                if msg:
                    invalid = {"code": "batch_failed", "message": msg}
            b = {
                "id": self._new_id("batch"), "object": "batch", "endpoint": body["endpoint"], "errors": None,
                "input_file_id": f["id"], "completion_window": "24h", "status": "validating",
                "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
                "_index": index, "_lines": lines, "_invalid": invalid, "_polls": 0, "_t0": time.monotonic(),
                "_model": str(lines[0]["body"].get("model")) if lines else "",
                "_tokens": sum(self.queue_tokens_of(line["body"]) for line in lines), "_queued": False,
            }
            self.batches[b["id"]] = b
            return Reply(200, _public(b))

    def batches_retrieve(self, rec: Recorded) -> Reply:
        b = self.batches.get(rec.params["id"])
        if b is None:
            return _error(404, f"No such Batch object: {rec.params['id']}", "not_found")
        with self._batch_lock:
            self._advance(b)
            return Reply(200, _public(b))

    def batches_list(self, rec: Recorded) -> Reply:
        with self._batch_lock:
            data = [_public(b) for b in sorted(self.batches.values(), key=lambda b: -b["_index"])]
        return Reply(200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None, "has_more": False})

    def batches_cancel(self, rec: Recorded) -> Reply:
        b = self.batches.get(rec.params["id"])
        if b is None:
            return _error(404, f"No such Batch object: {rec.params['id']}", "not_found")
        with self._batch_lock:
            self.batch_cancels += 1
            if b["status"] in ("validating", "in_progress"):
                b["status"], b["cancelling_at"] = "cancelling", int(time.time())
            return Reply(200, _public(b))

    batches_cancel.accepts_raw = True  # type: ignore[attr-defined]  # the SDK posts no body

    def _advance(self, b: dict[str, Any]) -> None:
        """One poll of batch `b` (under the batch lock): move it along its life cycle."""
        if b["status"] in BATCH_TERMINAL:
            return
        b["_polls"] += 1
        now = int(time.time())
        if b["status"] == "cancelling":
            self._finish(b, cancelled=True)
            return
        if b["_invalid"] is not None:
            b["status"], b["failed_at"] = "failed", now
            b["errors"] = {"object": "list", "data": [{**b["_invalid"], "param": None, "line": None}]}
            return
        total = len(b["_lines"])
        if b["status"] == "validating":
            wait = self.batch_validating_polls
            if b["_polls"] < (wait(b["_index"]) if callable(wait) else wait):
                return
            over = self._queue_check(b)
            if over is not None:
                b["status"], b["failed_at"] = "failed", now
                b["errors"] = {"object": "list", "data": [{**over, "param": None, "line": None}]}
                self.token_limit_failures += 1
                return
            b["status"], b["in_progress_at"] = "in_progress", now
            b["request_counts"]["total"] = total
        due = b["_polls"] >= self.batch_polls and time.monotonic() - b["_t0"] >= self.batch_seconds
        if due and not self._held.is_set():
            self._finish(b)
        else:  # something for a progress bar to show
            b["request_counts"]["completed"] = min(total - 1, total * b["_polls"] // max(2, self.batch_polls + 1))

    def queue_tokens_of(self, body: dict[str, Any]) -> int:
        """The tokens one batch line holds in the queue: its prompt tokens as this server bills them."""
        usage = self._usage(body)
        if usage is not None:
            return int(usage[0])
        return prompt_tokens(body)  # as `completion` bills it

    def enqueued_tokens(self, model: str) -> int:
        """Tokens of `model`'s batches in the queue now (validated and not finished), others' included."""
        with self._batch_lock:
            ours = sum(b["_tokens"] for b in self.batches.values()
                       if b["_queued"] and b["_model"] == model and b["status"] not in BATCH_TERMINAL)
            return ours + self.batch_queue_external.get(model, 0)

    def _queue_check(self, b: dict[str, Any]) -> dict[str, str] | None:
        """At validation: queue batch `b`, or the token_limit_exceeded error if it would not fit."""
        model, limit = b["_model"], self.batch_queue_tokens
        if isinstance(limit, dict):
            limit = limit.get(model)
        queued = self.enqueued_tokens(model)
        if limit is not None and queued + b["_tokens"] > limit:
            return {"code": "token_limit_exceeded",
                    "message": f"Enqueued token limit reached for {model} in organization org-test. Limit: {limit:,} "
                               "enqueued tokens. Please try again once some in_progress batches have been completed."}
        b["_queued"] = True
        self.batch_queue_peak[model] = max(self.batch_queue_peak.get(model, 0), queued + b["_tokens"])
        return None

    def _finish(self, b: dict[str, Any], cancelled: bool = False) -> None:
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        expired = False
        for line in b["_lines"]:
            cid, body = line["custom_id"], line["body"]
            if cancelled:
                err.append(_batch_error_line(cid, "batch_cancelled", "The batch was cancelled before this request ran."))
                continue
            fault = self.pick_batch_fault(b["_index"], cid, body)
            if fault == "expire":
                expired = True
                err.append(_batch_error_line(
                    cid, "batch_expired", "This request could not be executed before the completion window expired."))
                continue
            if fault in ("drop", "timeout"):
                fault = "500"
            n = 1_000_000 + self._batch_lines  # own numbering: `count` counts HTTP requests only
            self._batch_lines += 1
            reply = self.answer(body, n, fault, {}, batch=True)
            entry = {"id": f"batch_req_{n}", "custom_id": cid, "error": None,
                     "response": {"status_code": reply.status, "request_id": f"req_{n}", "body": reply.body}}
            (out if reply.status == 200 or self.batch_errors_in_output else err).append(entry)
        now = int(time.time())
        ok = sum(1 for e in out if e["response"]["status_code"] == 200)
        b["request_counts"] = {"total": len(b["_lines"]), "completed": ok, "failed": len(b["_lines"]) - ok}
        for key, entries in (("output_file_id", out), ("error_file_id", err)):
            if entries:
                data = "".join(json.dumps(e) + "\n" for e in entries).encode("utf-8")
                b[key] = self._store_file(data, f"{b['id']}_{key[:-8]}.jsonl", "batch_output")["id"]
        if cancelled:
            b["status"], b["cancelled_at"] = "cancelled", now
        elif expired:
            b["status"], b["expired_at"] = "expired", now
        else:
            b["status"], b["finalizing_at"], b["completed_at"] = "completed", now, now

    # -- ThreadingHTTPServer
    def _start_threading(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                rec = outer._register(method, self.path, raw, headers)
                reply = outer.handle(rec)
                delay = outer.latency + reply.sleep
                if delay > 0 and outer._stopping.wait(delay):
                    reply = Reply(drop=True)
                rec.replying = time.monotonic()
                try:
                    if reply.drop:
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    data = reply.payload()
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.content_type)
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True
                finally:
                    rec.finished = time.monotonic()
                    rec.status = None if reply.drop else reply.status

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def handle(self) -> None:
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError, OSError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024
            allow_reuse_address = True

        self._httpd = Server((self.host, self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()

    # -- asyncio server (HTTP/1.1 keep-alive, Content-Length bodies only)
    def _start_asyncio(self) -> None:
        err: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                srv = loop.run_until_complete(asyncio.start_server(self._aio_conn, self.host, self.port, backlog=1024))
                self.port = srv.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001
                err.append(e)
                self._ready.set()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                srv.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-aio", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if err:
            raise err[0]

    async def _aio_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(length) if length else b""
                rec = self._register(method, path, raw, headers)
                reply = self.handle(rec)
                delay = self.latency + reply.sleep
                if delay > 0:
                    await asyncio.sleep(delay)
                rec.replying = time.monotonic()
                if reply.drop:
                    rec.finished = time.monotonic()
                    writer.transport.abort()
                    return
                data = reply.payload()
                out = [f"HTTP/1.1 {reply.status} X", f"content-type: {reply.content_type}",
                       f"content-length: {len(data)}"]
                out += [f"{k}: {v}" for k, v in reply.headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
                rec.finished, rec.status = time.monotonic(), reply.status
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _batch_error_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": f"batch_req_{custom_id[-12:]}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """{field name: (filename, bytes)} of a multipart/form-data body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


BATCH_ROUTES: dict[tuple[str, str], Callable[[FakeOpenAIServer, Recorded], Reply]] = {
    ("POST", "/v1/files"): FakeOpenAIServer.files_create,
    ("GET", "/v1/files/{id}"): FakeOpenAIServer.files_retrieve,
    ("GET", "/v1/files/{id}/content"): FakeOpenAIServer.files_content,
    ("POST", "/v1/batches"): FakeOpenAIServer.batches_create,
    ("GET", "/v1/batches"): FakeOpenAIServer.batches_list,
    ("GET", "/v1/batches/{id}"): FakeOpenAIServer.batches_retrieve,
    ("POST", "/v1/batches/{id}/cancel"): FakeOpenAIServer.batches_cancel,
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", default=",".join(RETRYABLE_FAULTS + CONTENT_FAULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", default="0")
    ap.add_argument("--timeout-sleep", type=float, default=5.0)
    ap.add_argument("--server", choices=("thread", "asyncio"), default="thread")
    ap.add_argument("--no-record", action="store_true", help="keep counts only (long benchmarks)")
    add_arguments(ap)  # --limit MODEL=RPM,TPM, --time-scale, --reasoning-latency, --error-rate, ...
    args = ap.parse_args(argv)
    srv = FakeOpenAIServer(
        latency=args.latency, fault_rate=args.fault_rate, fault_kinds=tuple(f for f in args.faults.split(",") if f),
        seed=args.seed, retry_after=args.retry_after, timeout_sleep=args.timeout_sleep, host=args.host,
        port=args.port, server=args.server, record=not args.no_record, service=service_from_args(args),
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {srv.base_url}", flush=True)
    done.wait()
    print(f"REQUESTS {srv.count}", flush=True)
    if srv.service is not None:
        print(f"STATS {json.dumps(srv.service.stats())}", flush=True)
    srv.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
