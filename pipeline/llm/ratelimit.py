"""Client-side rate limiting. Three things hold a request back before it is sent:

1. The configured limits (`llm.requests_per_minute`, `llm.tokens_per_minute`), shared by every client
   of the same service in the process (a streamed build's stages run at once): token
   buckets holding one second's worth, refilled continuously, so the rate is smooth rather than a
   minute's quota at once. A request larger than a bucket waits for a full one and goes into debt.
2. The service's own limits, per model, learned from the `x-ratelimit-*` headers of its answers
   (OpenAI sends them with every answer, 200 and 429 alike). The service keeps, per model, a
   requests bucket and a tokens bucket whose capacity is the per-minute limit, refilled
   continuously; a request costs 1 and its prompt tokens plus the max tokens it asks for. The
   limiter mirrors each bucket (`_Mirror`): it takes what each request asks when it is sent, and
   every answer corrects the mirror from the service's `remaining` (the service counts tokens its
   own way, so our estimate drifts; the header is the truth as of that request's arrival). A small
   reserve is kept unspent, so that the error of the estimates still in flight lands in it rather
   than in a 429; it costs no throughput, only the first burst.
3. A pause that a 429 with a wait hint (Retry-After, "try again in") sets for the WHOLE client.

Waiting here is queueing: the client does not count it against a request's deadline. A wait longer
than the caller's bound raises `RateLimitWait` (the client then stops with one line). `waiting()`
says what the longest current wait is for, for the progress line.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

#: Share of a learned limit kept unspent (see the module docstring, point 2).
RESERVE = 0.05
#: The service documents per-minute limits; the window is re-learned from the reset headers.
DEFAULT_WINDOW_S = 60.0
KINDS = ("requests", "tokens")
_NOUN = {"requests": "request", "tokens": "token"}


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


def _number(value: str | None) -> float | None:
    """A header's non-negative finite number, else None (Azure sends -1 for "unknown")."""
    try:
        x = float(value) if value is not None else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) and x >= 0 else None


@dataclass(frozen=True)
class Reading:
    """One kind's `x-ratelimit-{limit,remaining,reset}-<kind>` headers, validated."""

    limit: float | None
    remaining: float | None
    reset_s: float | None


@dataclass(frozen=True)
class RateLimitHeaders:
    """The rate-limit headers of one answer (nothing else of the headers is kept)."""

    requests: Reading
    tokens: Reading

    @classmethod
    def parse(cls, headers: Mapping[str, str] | None) -> RateLimitHeaders | None:
        if headers is None:
            return None
        readings = {}
        for kind in KINDS:
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            readings[kind] = Reading(
                limit if limit else None,  # a limit of 0 would mean "never send": treat as unknown
                _number(headers.get(f"x-ratelimit-remaining-{kind}")),
                parse_duration(headers.get(f"x-ratelimit-reset-{kind}")),
            )
        out = cls(**readings)
        return out if any(r.limit is not None for r in readings.values()) else None

    def of(self, kind: str) -> Reading:
        return self.requests if kind == "requests" else self.tokens


class RateLimitWait(Exception):
    """The limiter would wait `seconds` (longer than the caller allows) for `what`."""

    def __init__(self, seconds: float, what: str):
        super().__init__(f"{seconds:.0f}s for {what}")
        self.seconds, self.what = seconds, what


class _Bucket:
    """A configured limit: one second's worth, refilled continuously."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(1.0, self.rate)  # one second's worth
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class _Mirror:
    """The service's bucket for one model and one kind, as this client sees it."""

    def __init__(self, limit: float, now: float):
        self.limit = limit
        self.window = DEFAULT_WINDOW_S
        self.window_learned = False
        self.level = limit  # corrected by the first reading
        self.stamp = now
        self.synced = -1.0  # `taken` right after the request whose reading set `level` last
        # How much too high the mirror was found to be lately (decaying over one window): kept
        # unspent on top of the reserve. Requests that reach the service in another order than
        # sent, or later than sent, make a reading look better than the truth.
        self.margin = 0.0
        self.margin_stamp = now

    @property
    def rate(self) -> float:
        return self.limit / self.window

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        self.refill(now)
        need = min(amount + RESERVE * self.limit + self.margin, self.limit)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def observe(self, r: Reading, after: float, taken: float, sent_at: float, now: float) -> None:
        """Correct from one answer's reading. `after`: this kind's `taken` just after the request
        was counted; `taken`: now; `sent_at`: when it was sent."""
        if r.limit is not None:
            self.limit = r.limit
        if r.remaining is not None and r.reset_s is not None and r.reset_s > 0:
            used = self.limit - r.remaining
            if used >= max(1.0, 0.02 * self.limit):
                # Time to a full bucket = used / rate: the window the limit is "per" (60 s for
                # OpenAI's per-minute limits; a per-day quota, or a time-scaled test server, differ).
                w = r.reset_s * self.limit / used
                self.window = w if not self.window_learned else 0.7 * self.window + 0.3 * w
                self.window_learned = True
        if r.remaining is None or after < self.synced:
            return  # no level, or an older request's answer than the one already used
        self.synced = after
        # The service's level at the request's arrival, refilled since, less what was sent after it.
        level = min(self.limit, r.remaining + self.rate * max(0.0, now - sent_at) - (taken - after))
        self.refill(now)
        # (The first reading, which replaces the guess of a full bucket, counts too: a new client
        # opens with a burst, whose readings are the least reliable; it costs the first window.)
        self.margin *= math.exp(-(now - self.margin_stamp) / self.window)
        self.margin = min(0.5 * self.limit, max(self.margin, self.level - level))
        self.margin_stamp = now
        self.level = level


@dataclass
class _Model:
    taken: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in KINDS})
    mirrors: dict[str, _Mirror] = field(default_factory=dict)
    # The line of the process's clients waiting for this model (each client's first waiter in it):
    # served in arrival order, so that a stage asking small requests (generate) cannot starve one
    # asking larger ones (mine) by fitting into every refill first.
    line: deque = field(default_factory=deque)
    numbers: itertools.count = field(default_factory=itertools.count)


#: What this process's limiters learned of each service's per-model limits, by service (base URL and
#: key variable): a stage's new client starts from what the previous one learned, instead of opening
#: with a burst into a bucket that the previous stage emptied. The stages of a streamed build run at
#: once, each client in its own thread: their check-and-take and `observe` hold `_SHARED`.
_LEARNED: dict[str, dict[str, _Model]] = {}

#: The configured limits of each service, shared by the process's clients of it: a streamed build runs
#: several stages at once, each with its own client, and `llm.requests_per_minute` /
#: `llm.tokens_per_minute` are the account's limits, not each stage's.
_CONFIGURED: dict[tuple[str, str, float], "_Bucket"] = {}

#: Held for the check-and-take of a request and for `observe`: the clients of a streamed build wait in
#: their own threads (one event loop each) on the shared buckets above; without it two of them could
#: both find room for one request. Never held across an await.
_SHARED = threading.Lock()


def _configured(service: str | None, kind: str, per_minute: float | None) -> "_Bucket | None":
    if not per_minute:
        return None
    if service is None:
        return _Bucket(per_minute)
    with _SHARED:
        return _CONFIGURED.setdefault((service, kind, float(per_minute)), _Bucket(per_minute))


@dataclass(frozen=True)
class Ticket:
    """What one granted request took: its model and, per kind, the model's `taken` after it."""

    model: str
    after: dict[str, float]
    sent_at: float


class RateLimiter:
    learns = True  # it takes `observe`; the Ray executor's remote limiter does not

    def __init__(
        self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
        service: str | None = None,
    ):
        """`service`: the key under which what is learned from the headers is shared in the process."""
        self._requests = _configured(service, "requests", requests_per_minute)
        self._tokens = _configured(service, "tokens", tokens_per_minute)
        self.paused_until = 0.0  # time.monotonic() seconds
        self._models: dict[str, _Model] = _LEARNED.setdefault(service, {}) if service is not None else {}
        self._locks: dict[str | None, asyncio.Lock] = {}
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._waits: dict[int, tuple[float, str]] = {}  # waiter id -> (until, what)

    @property
    def limited(self) -> bool:
        """Some limit is configured (the learned ones are per model, looked up in `acquire`)."""
        return self._requests is not None or self._tokens is not None

    def pause(self, seconds: float) -> None:
        """Hold every new request of the client for `seconds` from now (extends, never shortens)."""
        if seconds > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    def learned(self) -> dict[str, dict[str, dict[str, float]]]:
        """{model: {kind: {limit, window_s, level}}} as learned from the headers (for tests, bench)."""
        return {m: {k: {"limit": x.limit, "window_s": x.window, "level": x.level} for k, x in st.mirrors.items()}
                for m, st in self._models.items()}

    def waiting(self) -> tuple[float, str] | None:
        """(seconds left, what for) of the longest wait in progress, or None."""
        now = time.monotonic()
        live = [(until - now, what) for until, what in self._waits.values() if until > now]
        return max(live) if live else None

    def _get_lock(self, model: str | None) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:
            self._locks, self._lock_loop = {}, loop
        lock = self._locks.get(model)
        if lock is None:
            lock = self._locks[model] = asyncio.Lock()
        return lock

    def _wait(self, tokens: float, st: _Model | None, model: str | None, now: float) -> tuple[float, str]:
        """The longest wait before one request may go, and what it is for."""
        waits = [(self.paused_until - now, "a 429's wait hint")]
        if self._requests is not None:
            waits.append((self._requests.wait_for(1, now), "llm.requests_per_minute"))
        if self._tokens is not None and tokens > 0:
            waits.append((self._tokens.wait_for(tokens, now), "llm.tokens_per_minute"))
        for kind, mirror in (st.mirrors.items() if st is not None else ()):
            amount = 1 if kind == "requests" else tokens
            if amount > 0:
                waits.append((mirror.wait_for(amount, now), f"the {model} {_NOUN[kind]} limit"))
        return max(waits)

    async def acquire(self, tokens: int = 0, model: str | None = None, max_wait_s: float | None = None) -> Ticket | None:
        """Wait until one request of about `tokens` tokens (prompt + max output) to `model` may be
        sent. Returns its ticket (for `observe`); raises `RateLimitWait` when the wait would be longer
        than `max_wait_s`."""
        st = self._models.setdefault(model, _Model()) if model is not None else None
        if not self.limited and not (st and st.mirrors) and time.monotonic() >= self.paused_until:
            with _SHARED:
                return self._take(tokens, st, model)  # fast path: nothing to wait for
        async with self._get_lock(model):  # FIFO per model: waiters are served in arrival order
            me = id(asyncio.current_task())
            number = None
            if st is not None:
                with _SHARED:  # and in the process's line for the model, across clients
                    number = next(st.numbers)
                    st.line.append(number)
            try:
                while True:
                    now = time.monotonic()
                    with _SHARED:
                        wait, what = self._wait(tokens, st, model, now)
                        first = st is None or st.line[0] == number
                        if wait <= 0 and first:
                            if st is not None:
                                st.line.popleft()
                            return self._take(tokens, st, model)
                    if not first:  # another client's request is ahead: look again shortly
                        await asyncio.sleep(min(max(wait, 0.002), 0.02))
                        continue
                    if max_wait_s is not None and wait > max_wait_s:
                        raise RateLimitWait(wait, what)
                    self._waits[me] = (now + wait, what)
                    await asyncio.sleep(wait)
            finally:
                self._waits.pop(me, None)
                if st is not None:
                    with _SHARED:
                        if number in st.line:
                            st.line.remove(number)

    def _take(self, tokens: float, st: _Model | None, model: str | None) -> Ticket | None:
        if self._requests is not None:
            self._requests.take(1)
        if self._tokens is not None and tokens > 0:
            self._tokens.take(tokens)
        if st is None:
            return None
        for kind in KINDS:
            amount = 1 if kind == "requests" else tokens
            st.taken[kind] += amount
            mirror = st.mirrors.get(kind)
            if mirror is not None:
                mirror.level -= amount
        return Ticket(model or "", dict(st.taken), time.monotonic())

    def observe(self, ticket: Ticket | None, headers: RateLimitHeaders | None) -> None:
        """Learn from the rate-limit headers of the answer to the request of `ticket` (None: the
        answer had none, so the service does not, or no longer, send them: forget the model's)."""
        if ticket is None:
            return
        with _SHARED:
            self._observe(ticket, headers)

    def _observe(self, ticket: Ticket, headers: RateLimitHeaders | None) -> None:
        st = self._models.setdefault(ticket.model, _Model())
        if headers is None:
            st.mirrors.clear()
            return
        now = time.monotonic()
        for kind in KINDS:
            r = headers.of(kind)
            mirror = st.mirrors.get(kind)
            if mirror is None:
                if r.limit is None:
                    continue
                mirror = st.mirrors[kind] = _Mirror(r.limit, now)
            mirror.observe(r, ticket.after[kind], st.taken[kind], ticket.sent_at, now)


def format_wait(seconds: float) -> str:
    """A duration as the service writes its reset headers: "180ms", "1.5s", "6m0s", "2h0m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


def describe_wait(seconds: float, what: str) -> str:
    """ "waiting 6m0s for the gpt-4o-mini token limit" (the progress line's and the stop's words)."""
    return f"waiting {format_wait(seconds)} for {what}"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2.0 ** max(0, attempt - 1))))


def headers_of(response: Any) -> RateLimitHeaders | None:
    """The rate-limit headers of an HTTP response object (anything with `.headers`), or None."""
    return RateLimitHeaders.parse(getattr(response, "headers", None))
