"""The LLM client's retry policy, on tenacity: what is retried, how long to wait, when to give up.

`LLMClient._send` makes one HTTP attempt per tenacity attempt; this module decides the rest:
- retried: errors the backend marks `retryable` and not `fatal` (408/409/429/5xx, timeouts,
  connection errors); anything else propagates unchanged after the first attempt;
- wait: the server's hint (Retry-After & co) plus a little jitter, else exponential backoff with
  full jitter (`backoff_delay`). A 429's hint is not slept here: it pauses the whole client
  (`on_pause`) and the next attempt waits for the pause in the rate limiter, as queueing that the
  request's deadline does not count;
- stop: after `max_attempts` attempts, or when the next wait would end past the request's deadline.
The messages of a request that gives up are those the client has always written (tests read them).
The random jitter comes from the client's own `random.Random`, so a seeded client is reproducible.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from pipeline.llm.ratelimit import backoff_delay


class RetriesExhausted(Exception):
    """A retryable error that will not be retried again; the message says why."""


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False)) and not getattr(exc, "fatal", False)


class RetryPolicy:
    """Builds one `AsyncRetrying` per request. `deadline()` is the request's deadline on the event
    loop clock (None until the first attempt starts); `on_retry(exc, attempt, wait)` runs before
    each sleep (counting, logging); `on_pause(seconds)` pauses the client after a 429 hint."""

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
        deadline_s: float,
        rng: random.Random,
        on_pause: Callable[[float], None],
        on_retry: Callable[[BaseException, int, float], None],
    ):
        self.max_attempts = max_attempts
        self.base, self.cap, self.deadline_s = backoff_base_s, backoff_max_s, deadline_s
        self.rng = rng
        self.on_pause, self.on_retry = on_pause, on_retry

    def _wait(self, rs: RetryCallState) -> float:
        err: Any = rs.outcome.exception()
        hint = getattr(err, "retry_after", None)
        if hint is None:
            return backoff_delay(rs.attempt_number, self.base, self.cap, self.rng)
        wait = hint + self.rng.uniform(0, min(1.0, 0.1 * hint))
        if getattr(err, "status", None) == 429 and hint > 0:
            # A rate limit's wait is queueing, not this request's time: the client pauses, and the
            # next attempt waits in the limiter, which the deadline does not count (a reset hint
            # longer than the deadline is waited for, up to llm.max_rate_limit_wait_s).
            self.on_pause(wait)
            return 0.0
        return wait

    def retrying(self, deadline: Callable[[], float | None]) -> AsyncRetrying:
        loop = asyncio.get_running_loop()

        def past_deadline(rs: RetryCallState) -> bool:
            d = deadline()
            return d is not None and loop.time() + rs.upcoming_sleep > d

        def stop(rs: RetryCallState) -> bool:
            return rs.attempt_number >= self.max_attempts or past_deadline(rs)

        def give_up(rs: RetryCallState) -> None:
            err, n = rs.outcome.exception(), rs.attempt_number
            if n >= self.max_attempts:
                raise RetriesExhausted(f"gave up after {n} attempts: {err}")
            raise RetriesExhausted(
                f"deadline of {self.deadline_s:g}s exceeded after {n} attempt(s) "
                f"(next wait {rs.upcoming_sleep:.1f}s): {err}"
            )

        def before_sleep(rs: RetryCallState) -> None:
            self.on_retry(rs.outcome.exception(), rs.attempt_number, rs.upcoming_sleep)

        return AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=self._wait,
            stop=stop,
            retry_error_callback=give_up,
            before_sleep=before_sleep,
            sleep=asyncio.sleep,
        )
