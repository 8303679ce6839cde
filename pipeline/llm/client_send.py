"""The client's sending side: one request's HTTP attempts, with retries, inside the concurrency
bound and the rate limits. A mixin of `LLMClient` (client.py keeps the cache, dedup and parsing).

- Retries: `_send` (tenacity, policy in retry.py) is the only retry loop; the SDK never retries.
- Rate limits: before each attempt the request queues for the limiter (`ratelimit.py`: the
  configured limits, the service's per-model limits learned from its headers, a 429's pause).
  Queueing is not the request's time: the deadline moves on by the time spent waiting for a slot
  and for the limiter. A wait longer than `llm.max_rate_limit_wait_s` stops the client with one
  line (a daily quota: rerun later, it resumes from the cache), rather than failing every row.
- Timeouts by model family (`settings.attempt_timeout_s`): a reasoning model's slow answer is
  waited for, not abandoned and sent again; the deadline is never shorter than one attempt.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipeline.errors import InfirError
from pipeline.llm.client_spend import _RequestFailed
from pipeline.llm.completion import InvalidAnswer, check_completion
from pipeline.llm.ratelimit import RateLimitWait, Ticket, describe_wait
from pipeline.llm.retry import RetriesExhausted, RetryPolicy
from pipeline.llm.tokens import estimate_prompt_tokens, max_output_tokens
from pipeline.llm.types import BATCH_FIELD, BUDGET_EXHAUSTED, BackendError, LLMTask

log = logging.getLogger("pipeline.llm.client")


class SendMixin:
    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem, self._sem_loop = asyncio.Semaphore(self.settings.concurrency), loop
        return self._sem

    def _check_can_send(self) -> None:
        if self.stop_reason is not None:
            raise _RequestFailed(self.stop_reason)
        if self.budget_exhausted:
            raise _RequestFailed(BUDGET_EXHAUSTED)
        cap = self.settings.max_cost_usd
        if self.ledger is None and cap is not None and self.totals.cost_usd >= cap:
            self._exhausted(cap)

    def _stop(self, reason: str) -> None:
        """Stop sending: every request not yet sent ends with `reason` (the first reason stays)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.error("LLM client: %s; no further requests are sent", reason)

    async def _send(self, body: dict[str, Any], task: LLMTask, acc: Any) -> dict[str, Any]:
        """HTTP with retries: the only retry layer (the SDK runs with max_retries=0).

        tenacity (`pipeline/llm/retry.py`) retries what the backend marks retryable, up to
        `max_attempts` attempts and the model's deadline, waiting the server's hint (Retry-After &
        co) or exponential backoff with full jitter; a 429 hint pauses the whole client. Non-retryable
        errors (400, 422, ...) fail at once; fatal ones (401, 403, 404, insufficient_quota) also stop
        the client from sending anything more."""
        s = self.settings
        deadline: list[float] = []  # starts at the first attempt: queueing is not the request's time

        def on_retry(err: BaseException, attempt: int, wait: float) -> None:
            self.totals.retries += 1
            log.debug("LLM task %s: %s; retry %d/%d in %.2fs", task.key_id, err, attempt, s.max_attempts - 1, wait)

        policy = RetryPolicy(
            max_attempts=s.max_attempts, backoff_base_s=s.backoff_base_s, backoff_max_s=s.backoff_max_s,
            deadline_s=s.deadline_for(str(body["model"])), rng=self._rng, on_pause=self.limiter.pause,
            on_retry=on_retry,
        )
        try:
            async for attempt in policy.retrying(lambda: deadline[0] if deadline else None):
                with attempt:
                    return await self._attempt(body, task, acc, deadline, attempt.retry_state.attempt_number)
        except RetriesExhausted as e:
            raise _RequestFailed(str(e)) from None
        raise AssertionError("unreachable: tenacity either returns, raises or gives up")

    async def _queue(self, body: dict[str, Any]) -> Ticket | None:
        """Wait for the rate limits; past `llm.max_rate_limit_wait_s`, stop the client."""
        bound = self.settings.max_rate_limit_wait_s
        cost = estimate_prompt_tokens(body["messages"]) + max_output_tokens(body)
        try:
            if getattr(self.limiter, "learns", False):
                return await self.limiter.acquire(cost, model=str(body["model"]), max_wait_s=bound)
            # The Ray executor's shared limiter: the configured limits and the 429 pause only.
            if self.limiter.pause_remaining() > bound:
                raise RateLimitWait(self.limiter.pause_remaining(), "a 429's wait hint")
            await self.limiter.acquire(cost)
            return None
        except RateLimitWait as w:
            self._stop(
                f"rate limit: {describe_wait(w.seconds, w.what)} is longer than llm.max_rate_limit_wait_s "
                f"({bound:g}s); rerun later (the answers so far are cached)"
            )
            raise _RequestFailed(self.stop_reason) from None

    async def _attempt(
        self, body: dict[str, Any], task: LLMTask, acc: Any, deadline: list[float], attempt: int
    ) -> dict[str, Any]:
        """One HTTP attempt inside the concurrency bound and the rate limiter. A retryable
        BackendError propagates to the retry policy; every other failure is final (_RequestFailed)."""
        loop = asyncio.get_running_loop()
        deadline_s = self.settings.deadline_for(str(body["model"]))
        self._check_can_send()
        queued = loop.time()
        async with self._semaphore():  # released before the retry wait: waiting holds no slot
            ticket = await self._queue(body)
            self._check_can_send()
            reservation = await self._reserve_when_room(body, task)
            if deadline:
                deadline[0] += loop.time() - queued  # queueing is not the request's time
            else:
                deadline.append(loop.time() + deadline_s)
            remaining = deadline[0] - loop.time()
            if remaining <= 0:
                self._release(reservation)
                raise _RequestFailed(f"deadline of {deadline_s:g}s exceeded after {attempt - 1} attempt(s)")
            acc.calls += 1
            self.totals.http_calls += 1
            try:
                response = await asyncio.wait_for(self._call_backend(body, task, ticket), remaining)
                response = self._checked(response)
            except BackendError as err:
                if err.kind == "body":  # a 2xx answer we cannot use: counted at its estimate
                    self._charge_estimate(body, task, reservation, acc)
                else:
                    self._release(reservation)
                self.breaker.answer(self, err)
                if err.kind in ("timeout", "connection"):
                    self.totals.no_response += 1
                if err.fatal:
                    self._stop(f"aborted: {err}")
                    raise _RequestFailed(str(err)) from None
                if not err.retryable:
                    raise _RequestFailed(str(err)) from None
                raise
            except asyncio.TimeoutError:
                self._release(reservation)
                self.totals.no_response += 1
                raise _RequestFailed(f"deadline of {deadline_s:g}s exceeded after {attempt} attempt(s)") from None
            except (asyncio.CancelledError, KeyboardInterrupt):
                self._release(reservation)
                raise
            except Exception as e:  # a backend bug: not retried
                self._release(reservation)
                raise _RequestFailed(f"backend error: {type(e).__name__}: {e}") from None
        self.breaker.answer(self, None)
        self._account(body, task, response, reservation, acc)
        return response

    def _checked(self, response: Any) -> dict[str, Any]:
        """The answer, checked at the edge (`completion.check_completion`): one that is not a usable
        chat.completion (content a number, choices a string, usage "lots" or negative) is a failed
        attempt, retried like a 2xx body that is not JSON, and never reaches the cache."""
        try:
            response = check_completion(response)
        except InvalidAnswer as e:
            self.totals.invalid_answers += 1
            raise BackendError(f"invalid answer: {e}", retryable=True, kind="body") from None
        response.pop(BATCH_FIELD, None)  # ours to set (batch_collect.py): it prices an answer at the batch discount
        return response

    def _call_backend(self, body: dict[str, Any], task: LLMTask, ticket: Ticket | None):
        """The backend's attempt; one that reports rate-limit headers hands them to the limiter."""
        if ticket is not None and getattr(self.backend, "reports_rate_limits", False):
            return self.backend.complete(body, task, observe=lambda headers: self.limiter.observe(ticket, headers))
        return self.backend.complete(body, task)

    def _account(
        self, body: dict[str, Any], task: LLMTask, response: dict[str, Any], reservation: int | None, acc: Any
    ) -> None:
        """An answer's cost: settled in the run's ledger, added to the totals."""
        u = self._usage_of(body, task, response)
        cost = self._price(body, response, task)
        if self.ledger is not None:
            try:
                self.ledger.settle(reservation, cost)
            except InfirError as e:  # the answer is kept (and cached); nothing more is sent
                if self.stop_reason is None:
                    self.stop_reason = f"spend ledger failed: {e}"
                    log.error("%s; no further requests are sent", e)
        t = self.totals
        t.usage_estimated += u.estimated
        t.prompt_tokens += u.prompt_tokens
        t.completion_tokens += u.completion_tokens
        t.cached_tokens += u.cached_tokens
        t.reasoning_tokens += u.reasoning_tokens
        t.cost_usd += cost
        acc.cost += cost
