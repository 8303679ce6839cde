"""Cost per stage and per accepted row, from the rows' own usage records (`usage_<stage>`).

The rows record what each call cost when it was made (cache hits included), so the figures hold
across resumes; the last run's HTTP calls and cache hits come from the stage's `_SUCCESS.json`.
Cached-input and reasoning tokens are shown where the usage struct records them, else "not recorded".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.report.load import USAGE_STAGES, RunData

_MODEL_COLUMN = {"generate": "generator_model", "mine": "poison_model", "verify": "judge_model"}
_SPLITS = ("cached_tokens", "reasoning_tokens")


def _prices(run: RunData):
    """The run's prices as its stages had them: its price file, and its `[llm.prices]` rows over it."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from pipeline.llm.price_settings import PriceRow
    from pipeline.llm.pricing import PriceTable

    llm_cfg = run.config.get("llm") or {}
    price_file = llm_cfg.get("price_file")
    rows = {}
    for model, row in (llm_cfg.get("prices") or {}).items():
        try:
            rows[model] = PriceRow.model_validate(row)
        except ValidationError:
            continue  # validated when the run was made; a hand-edited config.toml prices it as unknown
    settings = SimpleNamespace(price_file=price_file if price_file and Path(price_file).is_file() else None, prices=rows)
    return PriceTable.for_settings(settings)


def _price(prices, model: str | None, t: dict) -> dict | None:
    """Online and batch cost of the stage's tokens at `model`'s list price (None: not in the table)."""
    p = prices.lookup(model)
    if p is None:
        return None
    cached = t.get("cached_tokens") or 0
    online = prices.cost(model, t["prompt_tokens"], t["completion_tokens"], cached)
    return {"model": model, "online_usd": round(online, 6), "batch_usd": round(online * p.batch_discount, 6)}


def _stage_usage(run: RunData, stage: str) -> dict | None:
    col = f"usage_{stage}"
    if run.table is None or col not in run.table.column_names:
        return None
    fields = {f.name for f in run.table.schema.field(col).type}
    total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    total.update({k: 0 if k in fields else None for k in _SPLITS})
    for u in run.table.column(col).to_pylist():
        if not u:
            continue
        total["calls"] += 1
        for k in ("prompt_tokens", "completion_tokens", "cost_usd", *_SPLITS):
            if total.get(k) is not None:
                total[k] += u.get(k) or 0
    return total


def row_cost(row_usages: dict[str, dict | None]) -> dict:
    """One row's tokens and cost over its stages' usage records."""
    used = [u for u in row_usages.values() if u]
    return {
        "cost_usd": round(sum(u.get("cost_usd") or 0.0 for u in used), 8),
        "prompt_tokens": sum(u.get("prompt_tokens") or 0 for u in used),
        "completion_tokens": sum(u.get("completion_tokens") or 0 for u in used),
        "calls": len(used),
    }


def cost(run: RunData, accepted: int) -> dict:
    prices = _prices(run)
    stages = []
    for stage in USAGE_STAGES:
        t = _stage_usage(run, stage)
        if t is None:
            continue
        llm = (run.success.get(stage, {}).get("summary") or {}).get("llm") or {}
        models = Counter(m for m in (run.column(_MODEL_COLUMN.get(stage, "")) or []) if m)
        recorded = models.most_common(1)[0][0] if models else None
        configured = (run.config.get(stage) or {}).get("model")
        stages.append({
            "stage": stage,
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()},
            "mode": llm.get("mode", "online"),
            "last_run_http_calls": llm.get("http_calls"),
            "last_run_cache_hits": llm.get("cache_hits"),
            "model": recorded,
            "at_recorded_model": _price(prices, recorded, t),
            "at_configured_model": _price(prices, configured, t) if configured and configured != recorded else None,
        })
    total = {k: sum(s[k] or 0 for s in stages) for k in ("calls", "prompt_tokens", "completion_tokens", "cost_usd")}
    total["cost_usd"] = round(total["cost_usd"], 6)
    for k in _SPLITS:
        vals = [s[k] for s in stages]
        total[k] = sum(vals) if vals and all(v is not None for v in vals) else None

    def per(x):
        return None if not accepted or x is None else round(x / accepted, 8)

    configured = [s["at_configured_model"] for s in stages if s["at_configured_model"]]
    return {
        "stages": stages,
        "total": total,
        "per_accepted_row": {k: per(v) for k, v in total.items()},
        "configured_list_price": {
            "online_usd": round(sum(c["online_usd"] for c in configured), 6),
            "batch_usd": round(sum(c["batch_usd"] for c in configured), 6),
            "online_per_accepted_row": per(sum(c["online_usd"] for c in configured)),
            "batch_per_accepted_row": per(sum(c["batch_usd"] for c in configured)),
        } if configured else None,
        "price_table": prices.source.rsplit("/", 1)[-1],
    }
