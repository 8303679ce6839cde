"""The LLM limits of a whole run on many Ray workers: one small actor holds the request/token
buckets (the local limiter's own `RateLimiter`, unchanged) and the run's spend, and every worker's
client asks it before each HTTP attempt.

- Rate limits: the actor's `acquire` awaits the same token buckets as a local run, FIFO, so the
  run's requests/minute and tokens/minute hold over all workers together, and a 429 pause set by
  one worker holds every worker.
- Concurrency: not through the actor. The driver runs at most W tasks at once and gives each
  worker's client `llm.concurrency // W` slots (W <= llm.concurrency), so the sum over workers
  never exceeds `llm.concurrency`; a slot counter in an actor would leak the slots of a killed
  worker, and this costs no round trip.
- Budget (`llm.max_cost_usd`): workers report what each answer cost (`add_cost`); once the run's
  spend reaches the cap, `acquire` answers "exhausted" and the worker's client refuses to send,
  exactly like the local client's own check (it may overshoot by the requests already in flight).
  `spent()` is the hook for a durable run ledger (see the report of issue 17).
"""

from __future__ import annotations

import time

from pipeline.llm.client import LLMClient, _RequestFailed
from pipeline.llm.ratelimit import RateLimiter
from pipeline.llm.types import BUDGET_EXHAUSTED


class SharedLimits:
    """The actor's class (made remote by the driver: `ray.remote(SharedLimits)`). Async methods:
    Ray runs them on one event loop, so the buckets need no other lock."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None,
                 max_cost_usd: float | None, spent_usd: float = 0.0):
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self.cap = max_cost_usd
        self.spent_usd = spent_usd
        self.granted = 0

    def _exhausted(self) -> bool:
        return self.cap is not None and self.spent_usd >= self.cap

    async def acquire(self, tokens: int) -> tuple[float, bool]:
        """Wait for a request slot; (seconds of 429 pause left, budget exhausted)."""
        if self._exhausted():
            return self.limiter.pause_remaining(), True
        await self.limiter.acquire(tokens)
        self.granted += 1
        return self.limiter.pause_remaining(), self._exhausted()

    async def pause(self, seconds: float) -> None:
        self.limiter.pause(seconds)

    async def add_cost(self, usd: float) -> bool:
        self.spent_usd += usd
        return self._exhausted()

    async def spent(self) -> dict:
        return {"spent_usd": self.spent_usd, "cap_usd": self.cap, "granted": self.granted}


class RemoteLimiter:
    """What a worker's client holds as `limiter`: the `RateLimiter` protocol (`acquire`, `pause`,
    `pause_remaining`) answered by the shared actor."""

    limited = True

    def __init__(self, actor):
        self.actor = actor
        self.paused_until = 0.0  # this process's time.monotonic()
        self.exhausted = False

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)
            self.actor.pause.remote(seconds)

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    async def acquire(self, tokens: int = 0) -> None:
        # Clocks of two machines differ: the actor answers in seconds left, not in a timestamp.
        pause_left, exhausted = await self.actor.acquire.remote(tokens)
        if pause_left > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + pause_left)
        self.exhausted = self.exhausted or exhausted


class SharedLimitsClient(LLMClient):
    """The LLM client of a Ray worker: the shared limiter, and the run-wide budget."""

    def __init__(self, *args, limits, **kw):
        super().__init__(*args, **kw)
        self.limiter = RemoteLimiter(limits)
        self._reported = 0.0

    def _check_can_send(self) -> None:
        super()._check_can_send()
        if self.limiter.exhausted:
            self.budget_exhausted = True
            raise _RequestFailed(BUDGET_EXHAUSTED)

    async def _send(self, body, task, acc):
        try:
            return await super()._send(body, task, acc)
        finally:
            delta = self.totals.cost_usd - self._reported
            if delta > 0:
                self._reported += delta
                if await self.limiter.actor.add_cost.remote(delta):
                    self.limiter.exhausted = True
