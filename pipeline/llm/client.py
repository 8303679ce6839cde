"""The LLM client: a request (`LLMTask`) in, a validated pydantic object (`LLMResult.value`) out.

Layers, outermost first:
  persistent cache (+ in-run dedup of identical requests)
  -> budget / abort checks -> concurrency bound (semaphore) -> rate limiter (configured RPM/TPM,
     the service's per-model limits learned from its headers, 429 pause)
  -> retries (client_send.py, `_send`: the ONLY retry layer) -> backend (one HTTP attempt per call)
Parsing (versioned, `PARSER_VERSION`) runs after the cache lookup on the raw stored response, so a
parser fix costs no calls. An invalid answer gets exactly one repair request (itself cached).
A failing task never raises out of `run`: it ends `ok=False` with the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pipeline.errors import InfirError
from pipeline.llm.breaker import Breaker
from pipeline.llm.budget import SpendLedger
from pipeline.llm.client_send import SendMixin
from pipeline.llm.client_spend import SpendMixin, _RequestFailed
from pipeline.llm.cache import Cache
from pipeline.llm.openai_api.parse import logprobs_of, parse_response, repair_body
from pipeline.llm.openai_api.request import cache_key, request_of
from pipeline.llm.pricing import PriceTable
from pipeline.llm.ratelimit import RateLimiter
from pipeline.llm.settings import LLMSettings
from pipeline.llm.types import (
    BATCH_FIELD,
    BUDGET_EXHAUSTED,
    Backend,
    LLMResult,
    LLMTask,
    Totals,
    Usage,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# The client


@dataclass
class _Acc:
    calls: int = 0
    cost: float = 0.0


class LLMClient(SendMixin, SpendMixin):
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
        self.prices = prices if prices is not None else PriceTable.for_settings(settings)
        # What is learned from the service's headers is shared with the process's next client of the
        # same service (the next stage), keyed by where the requests go and with which key.
        service = f"{getattr(backend, 'base_url', None)}|{settings.api_key_env}"
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute, service=service)
        self.totals = Totals()
        self.budget_exhausted = False
        # The run's spend ledger (`budget.SpendLedger`): with one, the cap holds across stages,
        # processes and resumes; without, `max_cost_usd` caps this client's own spending.
        self.ledger: SpendLedger | None = None
        self.stop_reason: str | None = None  # set by a fatal backend error or a cache write failure
        self.breaker = Breaker.of(settings)  # stops a client whose first answers all hit one wall
        self._rng = rng or random.Random()
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # `start_loop`
        self._loop_thread: threading.Thread | None = None
        self._cache_dropped_seen = getattr(cache, "dropped", 0)

    # -- public API --------------------------------------------------------------------------
    def run(
        self, tasks: Iterable[LLMTask], on_result: Callable[[LLMResult], None] | None = None
    ) -> list[LLMResult]:
        """Sync facade of `arun` (closes the backend's connections at the end). With the client's own
        loop started (`start_loop`), it runs there instead: callers in several threads (the chunks a
        stage has in flight) then share one concurrency bound and one set of connections."""
        loop = self._loop
        if loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self.arun(tasks, on_result), loop)
            while True:  # never wait on a loop that has stopped (Ctrl-C: the client was closed)
                try:
                    return fut.result(timeout=1.0)
                except concurrent.futures.TimeoutError:
                    if not loop.is_running():
                        fut.cancel()
                        raise concurrent.futures.CancelledError("the client's loop stopped") from None

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

    def start_loop(self) -> None:
        """Run every later `run` on one event loop in a thread of its own, until `stop_loop`. A stage
        that keeps two chunks in flight needs it: each `run` on a fresh loop would get its own
        semaphore (twice `concurrency` in flight) and open new connections per chunk."""
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        th = threading.Thread(target=loop.run_forever, name="llm-client-loop", daemon=True)
        th.start()
        self._loop, self._loop_thread = loop, th

    def cancel_running(self) -> None:
        """Cancel every request in flight on the client's loop (Ctrl-C: do not wait for them)."""
        loop = self._loop
        if loop is None:
            return

        def cancel_all() -> None:
            for t in asyncio.all_tasks(loop):
                t.cancel()

        loop.call_soon_threadsafe(cancel_all)

    def stop_loop(self) -> None:
        """Close the backend's connections on the client's loop and stop it (no-op without one)."""
        loop, th = self._loop, self._loop_thread
        if loop is None or th is None:
            return
        self._loop = self._loop_thread = None

        async def wind_down() -> None:
            # Requests still running (Ctrl-C) end cancelled first, so that whoever waits on them
            # (a chunk's thread) is answered before the loop stops; then the connections close.
            me = asyncio.current_task()
            running = [t for t in asyncio.all_tasks() if t is not me]
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self.aclose_backend()

        try:
            asyncio.run_coroutine_threadsafe(wind_down(), loop).result(timeout=30)
        except Exception:  # best effort: the answers are already kept
            log.debug("winding down the client loop failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        th.join(timeout=30)
        if not th.is_alive():
            loop.close()

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
                self._count_dropped()
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

    async def aclose_backend(self) -> None:
        """Close the backend's connections (call at the end of the loop that used `arun`)."""
        closer = getattr(self.backend, "aclose", None)
        if closer is not None:
            await closer()

    async def aclose(self) -> None:
        await self.aclose_backend()
        self.close()

    def close(self) -> None:
        self.stop_loop()
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
        usage = self._usage_of(body, task, response)
        batch = bool(response.get(BATCH_FIELD))
        outcome = parse_response(response, task.output_model)
        answered = response  # the response whose answer is used (the repair's, after a repair)
        repaired = False
        if outcome.error is not None and self.settings.repair:
            self.totals.repairs += 1
            rbody = repair_body(body, outcome, task.output_model)
            try:
                rresponse, rcached = await self._fetch(rbody, cache_key(rbody), task, acc, fresh)
            except _RequestFailed as e:
                reason = e.reason if e.reason == BUDGET_EXHAUSTED else f"{outcome.error}; repair request failed: {e.reason}"
                return self._fail(task, key, reason, acc, usage, outcome.text)
            usage = usage + self._usage_of(rbody, task, rresponse)
            second = parse_response(rresponse, task.output_model)
            if second.error is not None:
                if cached and rcached and self._can_ask_again(fresh):
                    return await self._process(task, acc, fresh=True)
                return self._fail(
                    task, key, f"invalid after one repair: {second.error} (first answer: {outcome.error})",
                    acc, usage, second.text,
                )
            outcome, cached, repaired, answered = second, cached and rcached, True, rresponse
            batch = batch and bool(rresponse.get(BATCH_FIELD))
        if outcome.error is not None:
            if cached and self._can_ask_again(fresh):
                return await self._process(task, acc, fresh=True)
            return self._fail(task, key, outcome.error, acc, usage, outcome.text)
        return LLMResult(
            key_id=task.key_id, ok=True, value=outcome.value, error=None, usage=usage, cost_usd=acc.cost,
            cached=cached, http_calls=acc.calls, cache_key=key, raw_text=outcome.text, repaired=repaired,
            batch=batch, logprobs=logprobs_of(answered),
        )

    def _can_ask_again(self, fresh: bool) -> bool:
        """A task whose answers, all from the cache, still fail to parse is asked once more past the
        cache: replaying an earlier run's bad answer would make its failure permanent, and a rerun
        is how failed rows are retried. Answers that parse (with today's parser) are never re-asked."""
        return not fresh and getattr(self.backend, "can_resend", True)

    def _count_dropped(self) -> None:
        """Add the cache rows dropped since the last look (`Cache.dropped`: stored answers that were
        not a usable chat.completion, each then asked again) to the totals, each counted once."""
        if self.cache is not None:
            dropped = getattr(self.cache, "dropped", 0)
            self.totals.cache_dropped += dropped - self._cache_dropped_seen
            self._cache_dropped_seen = dropped

    def _price(self, body: dict[str, Any], response: dict[str, Any], task: LLMTask) -> float:
        u = self._usage_of(body, task, response)
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
            hit = self.cache.get(key)  # a stored answer that is not a usable completion: dropped, a miss
            self._count_dropped()
            if hit is not None:
                self.totals.cache_hits += 1
                self.totals.saved_cost_usd += self._price(body, hit, task)
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
                    model = str(body["model"])
                    hit = await self.cache.claim_or_wait(
                        key, self.settings.deadline_for(model) + self.settings.attempt_timeout_s(model))
                except (sqlite3.Error, OSError) as e:  # as for `put`: a cache we cannot write stops the sending
                    self.stop_reason = f"cache write failed: {e}"
                    raise _RequestFailed(self.stop_reason) from None
                self._count_dropped()
                if hit is not None:
                    self.totals.cache_hits += 1
                    self.totals.saved_cost_usd += self._price(body, hit, task)
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


def make_client(
    settings: LLMSettings,
    backend: Backend | None = None,
    *,
    cache: Cache | None | bool = True,
    prices: PriceTable | None = None,
) -> LLMClient:
    """Build the client from settings: cache at settings.cache_path (cache=False: none),
    prices from settings.price_file + settings.prices, backend from settings.backend unless given (the backends
    register by name: `pipeline.llm.backends`)."""
    if backend is None:
        from pipeline.llm.backends import backend_for

        backend = backend_for(settings)
    if cache is True:
        cache_obj = Cache(settings.cache_path) if settings.cache_path is not None else None
    elif cache is False:
        cache_obj = None
    else:
        cache_obj = cache
    return LLMClient(settings, backend, cache_obj, prices or PriceTable.for_settings(settings))
