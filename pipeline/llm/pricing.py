"""Token prices (USD per 1M tokens) from a TOML table; see `prices.toml` for the format."""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pipeline.errors import InfirError
from pipeline.llm.price_settings import PriceRow

log = logging.getLogger(__name__)

BUNDLED_PRICES = Path(__file__).resolve().parent / "prices.toml"
_SNAPSHOT_RE = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
#: Models whose missing price was said once in this process (by the run's up-front check or by
#: the first `cost`): one line per model, however many tables and clients a run builds.
_SAID_UNPRICED: set[str] = set()


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

    @classmethod
    def of(cls, row: PriceRow, default_discount: float) -> ModelPrice:
        return cls(
            input=row.input,
            cached_input=row.input if row.cached_input is None else row.cached_input,
            output=row.output,
            batch_discount=default_discount if row.batch_discount is None else row.batch_discount,
            reasoning_tokens=tuple(sorted(row.reasoning_tokens.items())),
        )


def _row_error(e: ValidationError) -> str:
    first = e.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    what = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"{key}: {what}" if key else what


class PriceTable:
    def __init__(self, prices: dict[str, ModelPrice], source: str = "<memory>", default_discount: float = 0.5):
        self.prices = dict(prices)
        self.source = source
        self.default_discount = default_discount

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
        default_discount = data.get("defaults", {}).get("batch_discount", 0.5)
        if not isinstance(default_discount, (int, float)) or not 0 < default_discount <= 1:
            raise InfirError(f"price file {p}: defaults.batch_discount: expected a number in (0, 1]")
        models = data.get("models")
        if not isinstance(models, dict):
            raise InfirError(f"price file {p}: missing [models.\"<name>\"] tables")
        prices: dict[str, ModelPrice] = {}
        for name, row in models.items():
            try:
                prices[name] = ModelPrice.of(PriceRow.model_validate(row), float(default_discount))
            except ValidationError as e:
                raise InfirError(f"price file {p}: model {name!r}: {_row_error(e)}") from None
        return cls(prices, source=str(p), default_discount=float(default_discount))

    @classmethod
    def for_settings(cls, settings) -> PriceTable:
        """The run's prices: `llm.price_file` (None: the bundled table) with the config's own
        `[llm.prices."<model>"]` rows over it (the config wins)."""
        table = cls.load(settings.price_file)
        extra = getattr(settings, "prices", None) or {}
        if extra:
            table.prices.update({m: ModelPrice.of(row, table.default_discount) for m, row in extra.items()})
            table.source += " + [llm.prices]"
        return table

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

    def say_unpriced(self, model: str, line: str) -> None:
        """Log `line` (why `model`'s spend is not counted), once per model in this process; later
        `cost` calls for it stay silent."""
        if model not in _SAID_UNPRICED:
            _SAID_UNPRICED.add(model)
            log.warning("%s", line)

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
        """USD for one response. Unknown model: 0.0, said once per model name in this process
        (a run says it before its first request: `runner/prices.py`)."""
        price = self.lookup(model) or self.lookup(response_model)
        if price is None:
            self.say_unpriced(model, f"no price for model {model!r} in {self.source}: its cost is counted as 0")
            return 0.0
        cached = max(0, min(cached_tokens or 0, prompt_tokens))
        usd = (
            (prompt_tokens - cached) * price.input
            + cached * price.cached_input
            + completion_tokens * price.output
        ) / 1_000_000
        return usd * price.batch_discount if batch else usd
