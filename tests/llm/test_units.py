"""Unit tests: rate limiter, backoff, wait-hint headers, pricing."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time

import httpx2
import pytest

from pipeline.errors import InfirError
from pipeline.llm.openai_api.backend import parse_duration, retry_after_seconds
from pipeline.llm.pricing import PriceTable
from pipeline.llm.ratelimit import RateLimiter, backoff_delay

# -- rate limiter -----------------------------------------------------------------------------------


def _timed(coro_fn) -> float:
    t0 = time.monotonic()
    asyncio.run(coro_fn())
    return time.monotonic() - t0


def test_requests_per_minute_paces_requests():
    lim = RateLimiter(requests_per_minute=6000)  # 100/s, bucket of 100

    async def go():
        for _ in range(150):
            await lim.acquire()

    dt = _timed(go)
    assert 0.45 <= dt < 1.5, dt


def test_tokens_per_minute_paces_tokens():
    lim = RateLimiter(tokens_per_minute=120_000)  # 2000 tokens/s, bucket of 2000

    async def go():
        for _ in range(3):
            await lim.acquire(1000)

    dt = _timed(go)
    assert 0.45 <= dt < 1.2, dt


def test_request_larger_than_bucket_does_not_deadlock():
    lim = RateLimiter(tokens_per_minute=60_000)  # bucket of 1000 tokens, 1000 tokens/s

    async def go():
        await lim.acquire(1500)  # waits for a full bucket, then goes 500 into debt
        await lim.acquire(10)  # waits for the debt to be paid back, and 10 more

    dt = _timed(go)
    assert 0.45 <= dt < 1.0, dt


def test_unlimited_is_free_and_pause_blocks_everyone():
    lim = RateLimiter()

    async def many():
        for _ in range(10_000):
            await lim.acquire(10_000)

    assert _timed(many) < 0.5
    lim.pause(0.3)
    lim.pause(0.1)  # never shortens
    assert 0.25 < lim.pause_remaining() <= 0.3

    async def two():
        await asyncio.gather(lim.acquire(), lim.acquire())

    assert 0.28 <= _timed(two) < 0.6


def test_backoff_full_jitter_bounds():
    rng = random.Random(0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        xs = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(500)]
        assert min(xs) >= 0 and max(xs) <= cap
        assert max(xs) > 0.8 * cap  # full jitter: spans the range
    assert backoff_delay(5, 0.0, 10.0) == 0.0


# -- wait hints -----------------------------------------------------------------------------------


def test_parse_duration():
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("2.5") == 2.5
    assert parse_duration("soon") is None and parse_duration("") is None and parse_duration(None) is None
    assert parse_duration("1s junk") is None


def H(**kw) -> httpx2.Headers:
    return httpx2.Headers({k.replace("_", "-"): v for k, v in kw.items()})


def test_retry_after_seconds_priority_and_formats():
    assert retry_after_seconds(H(retry_after="2")) == 2.0
    assert retry_after_seconds(H(retry_after_ms="1500", retry_after="9")) == 1.5
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(H(retry_after=date), now=1_000_000) == pytest.approx(30.0)
    assert retry_after_seconds(H(retry_after=date), now=2_000_000) == 0.0  # in the past
    assert retry_after_seconds(H(retry_after="garbage")) is None
    # 429 without Retry-After: the exhausted bucket's reset time, else the shorter reset.
    hdr = H(x_ratelimit_reset_requests="20ms", x_ratelimit_reset_tokens="6m0s",
            x_ratelimit_remaining_requests="10", x_ratelimit_remaining_tokens="0")
    assert retry_after_seconds(hdr, 429) == 360.0
    hdr2 = H(x_ratelimit_reset_requests="1s", x_ratelimit_reset_tokens="3s")
    assert retry_after_seconds(hdr2, 429) == 1.0
    assert retry_after_seconds(hdr2, 503) is None  # reset headers mean nothing for a 5xx


# -- pricing --------------------------------------------------------------------------------------


def test_bundled_prices():
    t = PriceTable.load()
    # 1000 prompt tokens of which 200 cached, 500 completion tokens, gpt-4o-mini
    assert t.cost("gpt-4o-mini", 1000, 500, 200) == pytest.approx((800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6)
    assert t.cost("o3-mini", 1_000_000, 1_000_000) == pytest.approx(1.10 + 4.40)
    assert t.cost("o3-mini", 1_000_000, 0, batch=True) == pytest.approx(0.55)
    assert t.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)  # dated snapshot
    for m in ("gpt-4o", "o4-mini", "gpt-4.1-mini", "gpt-5-mini", "infir-offline"):
        assert t.lookup(m) is not None, m
    assert t.cost("infir-offline", 10**6, 10**6) == 0.0
    assert t.lookup("infir-offline@1a2b3c4d") == t.lookup("infir-offline")
    assert t.lookup("openai/gpt-4o-mini") == t.lookup("gpt-4o-mini")


def test_unknown_model_costs_zero_and_warns_once(caplog):
    t = PriceTable.load()
    with caplog.at_level(logging.WARNING, logger="pipeline.llm.pricing"):
        assert t.cost("my-local-llama", 1000, 1000) == 0.0
        assert t.cost("my-local-llama", 1000, 1000) == 0.0
    msgs = [r.getMessage() for r in caplog.records if "my-local-llama" in r.getMessage()]
    assert len(msgs) == 1
    # ...unless the response names a known model
    assert t.cost("alias", 1_000_000, 0, response_model="gpt-4o-mini") == pytest.approx(0.15)


def test_custom_price_file(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[defaults]\nbatch_discount = 0.25\n[models."mine"]\ninput = 2.0\noutput = 4.0\n')
    t = PriceTable.load(f)
    assert t.cost("mine", 1_000_000, 1_000_000) == pytest.approx(6.0)
    assert t.cost("mine", 1_000_000, 0, 1_000_000) == pytest.approx(2.0)  # cached_input defaults to input
    assert t.cost("mine", 1_000_000, 0, batch=True) == pytest.approx(0.5)
    assert t.lookup("gpt-4o-mini") is None
    f.write_text('[models."mine"]\ninput = 2.0\n')
    with pytest.raises(InfirError, match=r"p\.toml.*'mine'"):
        PriceTable.load(f)
    with pytest.raises(InfirError, match="not found"):
        PriceTable.load(tmp_path / "missing.toml")
