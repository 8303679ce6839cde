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
- Budget (`llm.max_cost_usd`) and spend: the run's spend ledger (`llm/budget.py`,
  `runs/<run>/spend.sqlite3`), opened by one more actor, `SharedLedger`, pinned to the driver's
  node; every worker's client holds a `RemoteLedger` whose reserve / settle / release call it.
  Workers never open the SQLite file: SQLite's locks are not reliable over a network filesystem,
  and the ledger's check that drops a dead process's reservations (`os.kill(pid, 0)`) only sees
  the processes of its own host. The actor's reservations carry the actor's pid (alive on the
  driver's host while the stage runs); those of a task whose worker died are released by the
  task's next attempt (`release_owner`, keyed by the task's chunk) and by the driver at stage end.
"""

from __future__ import annotations

import time

from pathlib import Path

from pipeline.llm.budget import SpendLedger
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


class SharedLedger:
    """The actor's class (`ray.remote(SharedLedger)`, placed on the driver's node): the run's
    `SpendLedger`, with each reservation remembered under the task that made it. Sync methods: the
    actor runs them one at a time, which the SQLite ledger would impose anyway."""

    def __init__(self, path: str, cap: float | None, label: str):
        self.ledger = SpendLedger(Path(path), cap, label)
        self.owned: dict[str, set[int]] = {}

    def reserve(self, owner: str, usd: float) -> int | None:
        rid = self.ledger.reserve(usd)
        if rid is not None:
            self.owned.setdefault(owner, set()).add(rid)
        return rid

    def settle(self, owner: str, reservation: int | None, usd: float, label: str | None = None) -> None:
        self.ledger.settle(reservation, usd, label)
        self.owned.get(owner, set()).discard(reservation)

    def release_owner(self, owner: str) -> int:
        """Release what a task left reserved (its worker died before settling). Returns how many."""
        held = self.owned.pop(owner, set())
        for rid in held:
            self.ledger.release(rid)
        return len(held)

    def release_all(self) -> int:
        return sum(self.release_owner(owner) for owner in list(self.owned))

    def spent(self, label: str | None = None) -> float:
        return self.ledger.spent(label)

    def held(self) -> int:
        return sum(len(v) for v in self.owned.values())


class RemoteLedger:
    """What a worker's client holds as `ledger` (the `SpendLedger` methods the client and the
    progress lines use), answered by the `SharedLedger` actor. Blocking calls, as the SQLite ledger's
    are: one local round trip per reservation and per answer."""

    def __init__(self, actor, owner: str, cap: float | None):
        self.actor = actor
        self.owner = owner
        self.cap = cap

    def _get(self, ref):
        import ray
        from ray.exceptions import RayError

        from pipeline.errors import InfirError

        try:
            return ray.get(ref)
        except RayError as e:  # the actor (or the driver's node) is gone: record nothing more
            raise InfirError(f"the run's spend ledger on the driver is unreachable: {type(e).__name__}") from None

    def reserve(self, usd: float) -> int | None:
        return self._get(self.actor.reserve.remote(self.owner, usd))

    def settle(self, reservation: int | None, usd: float, label: str | None = None) -> None:
        self._get(self.actor.settle.remote(self.owner, reservation, usd, label))

    def release(self, reservation: int | None) -> None:
        if reservation is not None:
            self.settle(reservation, 0.0)

    def spent(self, label: str | None = None) -> float:
        return self._get(self.actor.spent.remote(label))

    def would_exceed(self) -> bool:
        return self.cap is not None and self.spent() >= self.cap

    def fits_once_settled(self, usd: float) -> bool:
        return self.cap is None or self.spent() + usd <= self.cap

    def close(self) -> None:
        pass
