"""Prices before the first request. Every model an LLM stage will send requests to (`LLMStage.models`)
is looked up in the run's price table (`llm.price_file` + `[llm.prices]`) before anything is sent:
a model with no price stops the run when something needs its price (a cost cap, a dry run, a plan),
with one line saying how to declare it; otherwise the run goes on and says once that the model's
spend is not counted. An unknown model that looks like a reasoning model gets one line saying what
is assumed of it (pipeline/llm/families.py)."""

from __future__ import annotations

import logging
import re

from pipeline.errors import InfirError
from pipeline.llm.families import assumption
from pipeline.llm.pricing import PriceTable

log = logging.getLogger(__name__)

CAP = "the cost cap (--max-cost-usd / llm.max_cost_usd)"
DRY_RUN = "the dry run (--dry-run)"
PLAN = "the plan (infir plan / build --target-accepted)"

_SAID_ASSUMED: set[str] = set()


def _set_key(model: str) -> str:
    # --set splits keys on dots: a model name holding one is quoted (config.split_key).
    return model if re.fullmatch(r"[A-Za-z0-9_-]+", model) else f'"{model}"'


def how_to_price(model: str) -> str:
    """How to declare `model`'s price: in the config, or with --set."""
    k = _set_key(model)
    return (f'[llm.prices."{model}"] input = ..., output = ... (USD per 1M tokens) in the config, or '
            f"--set llm.prices.{k}.input=... --set llm.prices.{k}.output=...")


def check_prices(cfg, stages, purpose: str | None = None) -> None:
    """Refuse (one InfirError line) when a model of `stages` has no price and `purpose` (or the
    run's cost cap) needs one; else say once per model that its spend is not counted. Sends nothing."""
    prices = PriceTable.for_settings(cfg.llm)
    needs = purpose or (CAP if cfg.llm.max_cost_usd is not None else None)
    models = [(key, model) for stage in stages for key, model in stage.models(cfg)]
    missing: dict[str, list[str]] = {}  # model -> the config keys that name it
    for key, model in models:
        if prices.lookup(model) is None:
            missing.setdefault(model, []).append(key)
    where = f"llm.price_file {cfg.llm.price_file}" if cfg.llm.price_file else "the bundled prices.toml"
    where += " or [llm.prices]" if cfg.llm.prices else ""
    named = ", ".join(f"{' and '.join(keys)} = {model!r}" for model, keys in missing.items())
    if missing and needs:
        declare = "; ".join(how_to_price(m) for m in missing)
        raise InfirError(f"no price for {named} in {where}, and {needs} needs one: declare it, {declare}")
    # The run goes on: one line per model, before its first request.
    for _, model in models:
        line = assumption(model)
        if line and model not in _SAID_ASSUMED:
            _SAID_ASSUMED.add(model)
            log.warning("%s", line)
    for model, keys in missing.items():
        prices.say_unpriced(model, f"no price for {' and '.join(keys)} = {model!r} in {where}: its spend is not "
                                   f"counted (no cost cap is set); to count it, declare {how_to_price(model)}")
