"""Client-side rate limiting: requests/minute and tokens/minute token buckets, plus a client-wide
pause that a 429 with a wait (Retry-After, x-ratelimit-reset-*) sets, so that the WHOLE client
stops sending new requests until then, not just the request that got the 429.

Buckets hold one second's worth (at least one request) and refill continuously, so the rate is
smooth rather than bursting a minute's quota at once (providers enforce limits over short windows).
A request larger than a bucket's capacity waits for a full bucket and takes the bucket into debt.
"""

from __future__ import annotations

import asyncio
import random
import time


class _Bucket:
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


class RateLimiter:
    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self.paused_until = 0.0  # time.monotonic() seconds
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def limited(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def pause(self, seconds: float) -> None:
        """Hold every new request of the client for `seconds` from now (extends, never shortens)."""
        if seconds > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of about `tokens` tokens may be sent."""
        if not self.limited and time.monotonic() >= self.paused_until:
            return  # fast path: nothing to wait for
        async with self._get_lock():  # FIFO: waiters are served in arrival order
            while True:
                now = time.monotonic()
                wait = self.paused_until - now
                if self._requests is not None:
                    wait = max(wait, self._requests.wait_for(1, now))
                if self._tokens is not None and tokens > 0:
                    wait = max(wait, self._tokens.wait_for(tokens, now))
                if wait <= 0:
                    if self._requests is not None:
                        self._requests.take(1)
                    if self._tokens is not None and tokens > 0:
                        self._tokens.take(tokens)
                    return
                await asyncio.sleep(wait)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2.0 ** max(0, attempt - 1))))
