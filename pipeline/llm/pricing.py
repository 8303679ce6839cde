"""Token prices (USD per 1M tokens) from a TOML table; see `prices.toml` for the format."""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InfirError

log = logging.getLogger(__name__)

BUNDLED_PRICES = Path(__file__).resolve().parent / "prices.toml"
_SNAPSHOT_RE = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


@dataclass(frozen=True)
class ModelPrice:
    input: float
    cached_input: float
    output: float
    batch_discount: float = 0.5
    #: Expected hidden reasoning tokens per answer by `reasoning_effort` (an assumption stated in
    #: prices.toml): billed as output, invisible in the answer, so estimates must add them.
    reasoning_tokens: tuple[tuple[str, int], ...] = ()

    def expected_reasoning(self, effort: str | None) -> int:
        table = dict(self.reasoning_tokens)
        return int(table.get(effort or "medium", table.get("medium", 0)))


class PriceTable:
    def __init__(self, prices: dict[str, ModelPrice], source: str = "<memory>"):
        self.prices = dict(prices)
        self.source = source
        self._warned: set[str] = set()

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceTable:
        """Read a price table; None reads the bundled `prices.toml`."""
        p = Path(path) if path is not None else BUNDLED_PRICES
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InfirError(f"price file {p}: not found") from None
        except tomllib.TOMLDecodeError as e:
            raise InfirError(f"price file {p}: {e}") from None
        default_discount = float(data.get("defaults", {}).get("batch_discount", 0.5))
        models = data.get("models")
        if not isinstance(models, dict):
            raise InfirError(f"price file {p}: missing [models.\"<name>\"] tables")
        prices: dict[str, ModelPrice] = {}
        for name, row in models.items():
            try:
                unknown = set(row) - {"input", "cached_input", "output", "batch_discount", "reasoning_tokens"}
                if unknown:
                    raise KeyError(f"unknown key(s) {sorted(unknown)}")
                prices[name] = ModelPrice(
                    input=float(row["input"]),
                    cached_input=float(row.get("cached_input", row["input"])),
                    output=float(row["output"]),
                    batch_discount=float(row.get("batch_discount", default_discount)),
                    reasoning_tokens=tuple(sorted((str(k), int(v)) for k, v in dict(row.get("reasoning_tokens", {})).items())),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise InfirError(f"price file {p}: model {name!r}: {e}") from None
        return cls(prices, source=str(p))

    def lookup(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        base = _SNAPSHOT_RE.sub("", model)
        if base in self.prices:
            return self.prices[base]
        if "/" in model:  # provider-prefixed names, e.g. "openai/gpt-4o-mini"
            return self.lookup(model.rsplit("/", 1)[1])
        if "@" in model:  # versioned local names, e.g. "infir-offline@1a2b3c4d"
            return self.lookup(model.split("@", 1)[0])
        return None

    def expected_reasoning(self, model: str | None, effort: str | None) -> int:
        """Hidden reasoning tokens to expect per answer of `model` at `effort` (0 if none listed)."""
        price = self.lookup(model)
        return price.expected_reasoning(effort) if price is not None else 0

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        *,
        batch: bool = False,
        response_model: str | None = None,
    ) -> float:
        """USD for one response. Unknown model: 0.0 and one warning per model name."""
        price = self.lookup(model) or self.lookup(response_model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price for model %r in %s: its cost is counted as 0", model, self.source)
            return 0.0
        cached = max(0, min(cached_tokens or 0, prompt_tokens))
        usd = (
            (prompt_tokens - cached) * price.input
            + cached * price.cached_input
            + completion_tokens * price.output
        ) / 1_000_000
        return usd * price.batch_discount if batch else usd
