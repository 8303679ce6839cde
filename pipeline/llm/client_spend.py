"""The client's spending side: expected tokens and cost of a request (the dry run, the budget's
reservations), and the run's spend ledger (reserve before sending, settle on the answer). A mixin of
`LLMClient`, kept apart so that the client module stays about sending and caching."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable

from pipeline.errors import InfirError
from pipeline.llm.completion import has_usage
from pipeline.llm.openai_api.request import request_of
from pipeline.llm.tokens import estimate_prompt_tokens, max_output_tokens
from pipeline.llm.types import BUDGET_EXHAUSTED, LLMTask, Usage

log = logging.getLogger("pipeline.llm.client")

#: How often a request waiting for reservations in flight to settle looks at the ledger again.
SETTLE_POLL_S = 0.05


class _RequestFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SpendMixin:
    def estimate(self, tasks: Iterable[LLMTask]) -> dict[str, Any]:
        """Dry run: calls, tokens and cost of the tasks not in the cache (cached ones are free).
        Prompt tokens: tiktoken if installed, else chars/4. Completion tokens: the prompt's
        `expected_output_tokens` hint, else half the max-tokens parameter (256 if unset).
        `batch_cost_usd`: the same calls through the Batch API (the models' `batch_discount`)."""
        rows = []
        for t in tasks:
            rows.append((t, *request_of(t)))
        cached_keys = self.cache.contains_many(k for _, _, k in rows) if self.cache is not None else set()
        seen: set[str] = set()
        out = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.0,
               "batch_cost_usd": 0.0, "cached": 0}
        for t, body, key in rows:
            if key in cached_keys or key in seen:
                out["cached"] += 1
                continue
            seen.add(key)
            pt, visible, reasoning = self.expected_tokens(body, t)
            ct = visible + reasoning  # billed output: the answer and the hidden reasoning
            out["calls"] += 1
            out["prompt_tokens"] += pt
            out["completion_tokens"] += ct
            out["reasoning_tokens"] += reasoning
            out["cost_usd"] += self.prices.cost(t.model, pt, ct)
            out["batch_cost_usd"] += self.prices.cost(t.model, pt, ct, batch=True)
        return out

    def _exhausted(self, cap: float | None) -> None:
        if not self.budget_exhausted:
            log.warning("LLM budget of $%.4f reached: no further requests are sent", cap or 0.0)
        self.budget_exhausted = True
        raise _RequestFailed(BUDGET_EXHAUSTED)

    def expected_tokens(self, body: dict[str, Any], task: LLMTask) -> tuple[int, int, int]:
        """(prompt, visible output, hidden reasoning) tokens to expect from one request: the prompt
        counted, the answer from the prompt's `expected_output_tokens` hint (else half the max
        tokens), reasoning from the price table's expectation for the model and effort."""
        pt = estimate_prompt_tokens(body["messages"], task.model, exact=True)
        visible = task.prompt.expected_output_tokens or (max_output_tokens(body) // 2) or 256
        reasoning = self.prices.expected_reasoning(body["model"], body.get("reasoning_effort"))
        return pt, visible, reasoning

    def estimated_usage(self, body: dict[str, Any], task: LLMTask) -> Usage:
        """The usage of an answer that did not say: the request's estimate (`expected_tokens`, the
        dry run's and the reservation's), marked as estimated."""
        pt, visible, reasoning = self.expected_tokens(body, task)
        return Usage(pt, visible + reasoning, 0, reasoning, estimated=True)

    def _usage_of(self, body: dict[str, Any], task: LLMTask, response: dict[str, Any]) -> Usage:
        """What an answer (checked at the edge) used: its `usage`, or the request's estimate when it
        has none, so that an answer without usage is never free to the cap."""
        return Usage.of(response) if has_usage(response) else self.estimated_usage(body, task)

    def _charge_estimate(self, body: dict[str, Any], task: LLMTask, reservation: int | None, acc: Any) -> None:
        """A 2xx answer that could not be used (not JSON, not a completion): the service may have
        billed it, so the cap counts it at the request's estimate instead of forgetting it."""
        u = self.estimated_usage(body, task)
        cost = self.prices.cost(body["model"], u.prompt_tokens, u.completion_tokens)
        if self.ledger is not None:
            self._ledger(self.ledger.settle, reservation, cost)
        self.totals.cost_usd += cost
        self.totals.usage_estimated += 1
        acc.cost += cost

    async def _reserve_when_room(self, body: dict[str, Any], task: LLMTask) -> int | None:
        """Reserve a request's expected cost in the run's ledger before it is sent. When it does not
        fit only because of what requests in flight have reserved (they settle at what they cost,
        usually less), wait for them: a build whose stages spend at once, each reserving for its
        own requests, is not stopped by reservations while the cap still has room. It stops when
        the request would not fit even with nothing reserved."""
        if self.ledger is None:
            return None
        pt, visible, reasoning = self.expected_tokens(body, task)
        usd = self.prices.cost(body["model"], pt, visible + reasoning)
        while True:
            reservation = self._ledger(self.ledger.reserve, usd)
            if reservation is not None:
                return reservation
            if self.budget_exhausted or not self._ledger(self.ledger.fits_once_settled, usd):
                self._exhausted(self.ledger.cap)
            await asyncio.sleep(SETTLE_POLL_S)

    def _ledger(self, fn, *args):
        """A ledger call; a spend that cannot be recorded stops the client (paying for calls the
        budget cannot count is worse than stopping), as a failed cache write does."""
        try:
            return fn(*args)
        except InfirError as e:
            if self.stop_reason is None:
                self.stop_reason = f"spend ledger failed: {e}"
                log.error("%s; no further requests are sent", e)
            raise _RequestFailed(self.stop_reason) from None

    def _release(self, reservation: int | None) -> None:
        if self.ledger is not None:
            self._ledger(self.ledger.release, reservation)  # nothing to pay for a failed attempt
