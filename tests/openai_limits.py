"""OpenAI's service behaviour for the local test server (tests/openai_server.py, option `service=`):
per-model rate limits with the real headers and 429s, a reasoning-latency tail, occasional 5xx, and
a time scale, so that a long run against the real service can be rehearsed in minutes.

    service = Service(limits={"gpt-4o-mini": (500, 200_000), "o3-mini": (500, 200_000)}, time_scale=60,
                      reasoning_latency=(40.0, 0.67), error_rate=0.002)
    with FakeOpenAIServer(service=service) as srv: ...
    service.tally.total("rate_limited"), service.tally.as_dict()["gpt-4o-mini"]["tokens_asked"]

What the service does, as OpenAI documents it (platform.openai.com/docs/guides/rate-limits):
- Limits per model: requests per minute and tokens per minute, each a bucket whose capacity is the
  per-minute limit, refilled continuously. A request costs 1 request, and its prompt tokens PLUS
  the max tokens it asks for (`max_completion_tokens` / `max_tokens`) of the tokens bucket.
  Prompt tokens are counted by this server's own rule (`prompt_tokens`: words x 1.3 plus
  punctuation, near OpenAI's average for English; long words by 4 characters), not the client's
  chars/4 estimate, so a client that trusts its own count drifts as it would against the real
  tokenizer. The server bills the same count (`usage`).
- Every chat answer (200, 429, 5xx) carries `x-ratelimit-limit-{requests,tokens}`,
  `x-ratelimit-remaining-{requests,tokens}` and `x-ratelimit-reset-{requests,tokens}` (the time
  until that bucket is full again, written like "1s", "6m0s", "20ms").
- Over a limit: HTTP 429 with the service's body ("Rate limit reached for gpt-4o-mini in
  organization org-test on tokens per min (TPM): Limit 200000, Used 199100, Requested 1500. Please
  try again in 180ms. ..."), type "tokens" or "requests", code "rate_limit_exceeded", and no
  Retry-After (the service mostly sends none) unless `retry_after=True`. A rejected request still
  costs its request (the service says unsuccessful requests count); its tokens are not taken.
  A request asking more tokens than the limit gets the service's "Request too large" 429.
- `time_scale` (e.g. 60): one server minute is 60/time_scale real seconds: limits are per scaled
  minute, latencies are divided by it, and every header and message is in real time.
- Latency: reasoning models (o1/o3/o4/gpt-5, not gpt-5-chat) take lognormal(median, sigma) seconds
  when `reasoning_latency` is given (`REASONING_LATENCY`: median 40 s, sigma 0.67, so p95 about
  120 s); chat models `chat_latency` if given. Added to the server's own `latency`. Draws depend
  only on (seed, request number).
- `error_rate`: that share of admitted requests is answered 500 or 503 (the server counted them).
Counters (`Tally`): requests, answers, 429s, 5xx, tokens asked (admitted, by the server's count),
and tokens billed (the `usage` of the 200 answers) per model; `cost(prices)` prices the bill.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

_WORD = re.compile(r"\w+")
_PUNCT = re.compile(r"[^\w\s]")
_REASONING = re.compile(r"^(o\d|gpt-5)")
#: o3-mini at medium effort, as observed: median 40 s, p95 about 120 s (server seconds).
REASONING_LATENCY = (40.0, 0.67)
DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


def text_tokens(text: str) -> int:
    """The server's own token count of a text: 1.3 a word (OpenAI's ~0.75 words a token for
    English), a word longer than 8 characters (ids, hashes, a run of one letter) as one token per 4
    characters (as BPE cuts what it has not seen whole), plus one per punctuation mark.
    Deliberately NOT the client's chars/4 fallback (pipeline/llm/tokens.py): an estimate compared
    with this bill is checked against another rule, as it is against the real tokenizer."""
    words = sum(1.3 if len(w) <= 8 else len(w) / 4 for w in _WORD.findall(text))
    return math.ceil(words) + len(_PUNCT.findall(text))


def prompt_tokens(body: dict[str, Any]) -> int:
    """The server's own prompt-token count: per message 4 + `text_tokens`, plus 3 (what it bills
    and what it counts against the tokens per minute)."""
    return 3 + sum(4 + text_tokens(str(m.get("content") or "")) for m in body.get("messages") or [])


def asked_tokens(body: dict[str, Any]) -> int:
    """What a request counts against the tokens per minute: its prompt plus the max tokens asked."""
    most = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return prompt_tokens(body) + (int(most) if isinstance(most, (int, float)) else 0)


def is_reasoning(model: str) -> bool:
    name = model.rsplit("/", 1)[-1].lower()
    return bool(_REASONING.match(name)) and not name.startswith("gpt-5-chat")


def go_duration(seconds: float) -> str:
    """A duration as the service writes it: "20ms", "1.5s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    whole = math.ceil(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


class Bucket:
    """Capacity `limit`, refilled continuously at `limit` per (60 / time_scale) real seconds."""

    def __init__(self, limit: float, time_scale: float):
        self.limit = float(limit)
        self.rate = self.limit * time_scale / 60.0  # per real second
        self.level = self.limit
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        if now > self.stamp:  # (a bucket made after `now` was read has nothing to add)
            self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def reset_s(self) -> float:
        return (self.limit - self.level) / self.rate

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)


@dataclass
class ModelTally:
    requests: int = 0
    answered: int = 0  # 200
    rate_limited: int = 0  # 429
    server_errors: int = 0  # 5xx drawn by `error_rate`
    tokens_asked: int = 0  # admitted requests, by the server's count (prompt + max tokens)
    prompt_tokens: int = 0  # billed: the usage of the 200 answers
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class Tally:
    models: dict[str, ModelTally] = field(default_factory=dict)

    def of(self, model: str) -> ModelTally:
        return self.models.setdefault(model, ModelTally())

    def total(self, name: str) -> int:
        return sum(getattr(t, name) for t in self.models.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {m: dict(vars(t)) for m, t in self.models.items()}

    def cost(self, price: Callable[[str, int, int, int], float]) -> float:
        """The bill: `price(model, prompt, completion, cached)` summed over the models."""
        return sum(price(m, t.prompt_tokens, t.completion_tokens, t.cached_tokens) for m, t in self.models.items())


@dataclass
class Admission:
    headers: dict[str, str]
    refusal: tuple[str, str] | None = None  # (type, message) of a 429
    wait_s: float = 0.0


class Service:
    def __init__(
        self,
        limits: dict[str, tuple[float | None, float | None]] | None = None,
        *,
        time_scale: float = 1.0,
        retry_after: bool = False,
        reasoning_latency: tuple[float, float] | None = None,
        chat_latency: tuple[float, float] | None = None,
        error_rate: float = 0.0,
        seed: int = 0,
        organization: str = "org-test",
    ):
        """`limits`: {model: (requests per minute, tokens per minute)}, either None for no limit;
        "*" applies to every other model. A dated snapshot uses its alias's limits."""
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.limits = dict(limits or {})
        self.time_scale = time_scale
        self.retry_after = retry_after
        self.reasoning_latency, self.chat_latency = reasoning_latency, chat_latency
        self.error_rate, self.seed, self.organization = error_rate, seed, organization
        self.tally = Tally()
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()

    # -- limits
    def limit_of(self, model: str) -> tuple[str, tuple[float | None, float | None]] | None:
        """(the key whose limits apply, its limits), or None."""
        if model in self.limits:
            return model, self.limits[model]
        aliases = [k for k in self.limits if k != "*" and model.startswith(k + "-")]
        if aliases:
            key = max(aliases, key=len)
            return key, self.limits[key]
        return ("*", self.limits["*"]) if "*" in self.limits else None

    def _bucket(self, key: str, kind: str, limit: float) -> Bucket:
        b = self._buckets.get((key, kind))
        if b is None:
            b = self._buckets[(key, kind)] = Bucket(limit, self.time_scale)
        return b

    def admit(self, model: str, asked: int) -> Admission:
        """Take one request of `asked` tokens from the model's buckets, or say why not (429)."""
        found = self.limit_of(model)
        if found is None:
            return Admission({})
        key, (rpm, tpm) = found
        now = time.monotonic()
        with self._lock:
            req = self._bucket(key, "requests", rpm) if rpm else None
            tok = self._bucket(key, "tokens", tpm) if tpm else None
            for b in (req, tok):
                if b is not None:
                    b.refill(now)
            refusal, wait = None, 0.0
            if req is not None and req.level < 1:
                wait = req.wait_for(1)
                refusal = ("requests", self._message(model, "requests per min (RPM)", req, 1, wait))
            elif req is not None:
                req.level -= 1  # unsuccessful requests count too
            if refusal is None and tok is not None and asked > tok.limit:
                refusal = ("tokens", f"Request too large for {model} in organization {self.organization} on "
                                     f"tokens per min (TPM): Limit {int(tok.limit)}, Requested {asked}. The input "
                                     f"or output tokens must be reduced in order to run successfully. {DOCS}")
            elif refusal is None and tok is not None and tok.level < asked:
                wait = tok.wait_for(asked)
                refusal = ("tokens", self._message(model, "tokens per min (TPM)", tok, asked, wait))
            elif refusal is None and tok is not None:
                tok.level -= asked
            headers = {}
            for kind, b in (("requests", req), ("tokens", tok)):
                if b is not None:
                    headers[f"x-ratelimit-limit-{kind}"] = str(int(b.limit))
                    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(b.level)))
                    headers[f"x-ratelimit-reset-{kind}"] = go_duration(b.reset_s())
        return Admission(headers, refusal, wait)

    def _message(self, model: str, what: str, b: Bucket, asked: int, wait: float) -> str:
        return (f"Rate limit reached for {model} in organization {self.organization} on {what}: "
                f"Limit {int(b.limit)}, Used {int(b.limit - b.level)}, Requested {asked}. "
                f"Please try again in {go_duration(wait)}. {DOCS}")

    # -- latency and 5xx
    def latency_s(self, model: str, n: int) -> float:
        dist = self.reasoning_latency if is_reasoning(model) else self.chat_latency
        if dist is None:
            return 0.0
        median, sigma = dist
        rng = random.Random(f"{self.seed}:latency:{n}")
        return median * math.exp(sigma * rng.gauss(0.0, 1.0)) / self.time_scale

    def server_error(self, n: int) -> str | None:
        if self.error_rate <= 0:
            return None
        rng = random.Random(f"{self.seed}:5xx:{n}")
        return rng.choice(("500", "503")) if rng.random() < self.error_rate else None

    # -- the chat path (FakeOpenAIServer.chat_completions hands its requests here)
    def serve(self, server: Any, rec: Any, error: Callable[..., Any]) -> Any:
        """The reply to chat request `rec`; `error(status, message, code, type, headers)` builds
        the server's error replies."""
        body = rec.body
        model = str(body.get("model") or "")
        with self._lock:
            self.tally.of(model).requests += 1
        asked = asked_tokens(body)
        adm = self.admit(model, asked)
        if adm.refusal is not None:
            kind, message = adm.refusal
            rec.fault = "rate_limit"
            headers = dict(adm.headers)
            if self.retry_after:
                headers["retry-after"] = str(max(1, math.ceil(adm.wait_s)))
            with self._lock:
                self.tally.of(model).rate_limited += 1
            return error(429, message, "rate_limit_exceeded", kind, headers)
        fault = self.server_error(rec.n)
        if fault is None:
            fault = server.pick_fault(rec.n, body)
        rec.fault = fault
        reply = server.answer(body, rec.n, fault, rec.headers)
        reply.headers.update(adm.headers)
        reply.sleep += self.latency_s(model, rec.n)
        self._bill(model, asked, reply)
        return reply

    def _bill(self, model: str, asked: int, reply: Any) -> None:
        with self._lock:
            t = self.tally.of(model)
            t.tokens_asked += asked
            if reply.status >= 500:
                t.server_errors += 1
            usage = reply.body.get("usage") if reply.status == 200 and isinstance(reply.body, dict) else None
            if not usage:
                return
            t.answered += 1
            t.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            t.completion_tokens += int(usage.get("completion_tokens") or 0)
            t.cached_tokens += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            t.reasoning_tokens += int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"time_scale": self.time_scale, "models": self.tally.as_dict()}


# -- command line (tests/openai_server.py and bench/llm_server.py) -------------------------------


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--limit", action="append", default=[], metavar="MODEL=RPM,TPM",
                    help="per-model limits (repeatable; MODEL '*' for every other model; an empty side: none)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="one server minute = 60/SCALE real seconds")
    ap.add_argument("--limit-retry-after", action="store_true", help="send Retry-After with a 429")
    ap.add_argument("--reasoning-latency", default=None, metavar="MEDIAN,SIGMA",
                    help="lognormal seconds for reasoning models (server minutes; e.g. 40,0.67)")
    ap.add_argument("--chat-latency", default=None, metavar="MEDIAN,SIGMA", help="lognormal seconds for chat models")
    ap.add_argument("--error-rate", type=float, default=0.0, help="share of admitted requests answered 500/503")


def _pair(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    a, b = text.split(",")
    return float(a), float(b)


def service_from_args(args: argparse.Namespace) -> Service | None:
    """The Service the options ask for, or None when none of them is set (the plain server)."""
    limits: dict[str, tuple[float | None, float | None]] = {}
    for spec in args.limit:
        model, _, values = spec.partition("=")
        rpm, _, tpm = values.partition(",")
        limits[model] = (float(rpm) if rpm else None, float(tpm) if tpm else None)
    if not (limits or args.reasoning_latency or args.chat_latency or args.error_rate or args.time_scale != 1.0):
        return None
    return Service(limits, time_scale=args.time_scale, retry_after=args.limit_retry_after,
                   reasoning_latency=_pair(args.reasoning_latency), chat_latency=_pair(args.chat_latency),
                   error_rate=args.error_rate, seed=getattr(args, "seed", 0))
