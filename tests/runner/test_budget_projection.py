"""The budget stop says what the rest of the stage would cost: rows the budget refused are rows left,
not rows done (runner/watch.py), so the figure is the rest of the stage, checked against a full run."""

from __future__ import annotations

import re

import pytest

from conftest import make_config
from pipeline.errors import InfirError
from pipeline.llm.budget import SpendLedger
from run_helpers import billing_server
from stage_helpers import run_until

KEY = "sk-test-budget-projection"


def _spent(root, label):
    ledger = SpendLedger(root / "runs" / "sample" / "spend.sqlite3")
    try:
        return ledger.spent(label=label)
    finally:
        ledger.close()


def test_the_stop_line_prices_the_rest_of_the_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    sets = {"llm.backend": "openai", "llm.concurrency": 8, "verify.shard_rows": 40}
    with billing_server() as srv:
        run_until(make_config(**{**sets, "llm.base_url": srv.base_url, "run.runs_dir": str(tmp_path / "full" / "runs"),
                                 "llm.cache_path": str(tmp_path / "full" / "cache.sqlite3")}), "verify")
        full = _spent(tmp_path / "full", "verify")
        before = _spent(tmp_path / "full", None) - full  # generate and mine
        cap = before + 0.4 * full
        cfg = make_config(**{**sets, "llm.base_url": srv.base_url, "llm.max_cost_usd": cap,
                             "run.runs_dir": str(tmp_path / "capped" / "runs"),
                             "llm.cache_path": str(tmp_path / "capped" / "cache.sqlite3")})
        with pytest.raises(InfirError, match="stopped at the cost budget") as stop:
            run_until(cfg, "verify")
    spent = _spent(tmp_path / "capped", "verify")
    rest = float(re.search(r"the rest of this stage would cost about \$([0-9.]+)", str(stop.value)).group(1))
    # The projection: the mean cost of the rows answered so far times the rows left.
    assert rest == pytest.approx(full - spent, rel=0.25), (rest, full, spent)
