"""The report prices a run as its stages did: `[llm.prices]` rows of the run's config included."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.report import cost


def test_report_prices_a_model_declared_in_the_runs_config():
    run = SimpleNamespace(config={"llm": {"prices": {"o9-mini": {"input": 1.0, "output": 4.0}}}})
    prices = cost._prices(run)
    assert prices.lookup("o9-mini") is not None
    assert prices.cost("o9-mini", 1_000_000, 1_000_000) == 5.0
    assert prices.lookup("gpt-4o-mini") is not None  # the bundled table underneath


def test_report_skips_a_price_row_the_config_could_not_have_held():
    run = SimpleNamespace(config={"llm": {"prices": {"o9-mini": {"input": -1.0, "output": 4.0}}}})
    assert cost._prices(run).lookup("o9-mini") is None
