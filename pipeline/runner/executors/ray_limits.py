"""The LLM limits of a whole run on many Ray workers: one small actor holds the request/token
buckets (the local limiter's own `RateLimiter`, unchanged) and every worker's client asks it
before each HTTP attempt (`RemoteLimiter`, the limiter protocol the client already uses:
`acquire`, `pause`, `pause_remaining`).

- Rate limits: the actor's `acquire` awaits the same token buckets as a local run, FIFO, so the
  run's requests/minute and tokens/minute hold over all workers together, and a 429 pause set by
  one worker holds every worker.
- Concurrency: not through the actor. The driver runs at most W tasks at once and gives each
  worker's client `llm.concurrency // W` slots (W <= llm.concurrency), so the sum over workers
  never exceeds `llm.concurrency`; a slot counter in an actor would leak the slots of a killed
  worker, and this costs no round trip.
- Budget (`llm.max_cost_usd`): the run's spend ledger (`llm/budget.py`, `runs/<run>/spend.sqlite3`),
  which every worker's client reserves and settles in, as every local process does.
"""

from __future__ import annotations

import time

from pipeline.llm.ratelimit import RateLimiter


class SharedLimits:
    """The actor's class (made remote by the driver: `ray.remote(SharedLimits)`). Async methods:
    Ray runs them on one event loop, so the buckets need no other lock."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self.granted = 0

    async def acquire(self, tokens: int) -> float:
        """Wait for a request slot; returns the seconds of 429 pause left."""
        await self.limiter.acquire(tokens)
        self.granted += 1
        return self.limiter.pause_remaining()

    async def pause(self, seconds: float) -> None:
        self.limiter.pause(seconds)

    async def stats(self) -> dict:
        return {"granted": self.granted}


class RemoteLimiter:
    """What a worker's client holds as `limiter`, answered by the shared actor."""

    limited = True

    def __init__(self, actor):
        self.actor = actor
        self.paused_until = 0.0  # this process's time.monotonic()

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)
            self.actor.pause.remote(seconds)

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    async def acquire(self, tokens: int = 0) -> None:
        # Clocks of two machines differ: the actor answers in seconds left, not in a timestamp.
        pause_left = await self.actor.acquire.remote(tokens)
        if pause_left > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + pause_left)
