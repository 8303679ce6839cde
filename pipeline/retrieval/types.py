"""Inputs, outputs and settings of hard-negative mining."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass
class MiningQuery:
    """One query to mine negatives for.

    ``positive_ids`` are every judged positive of the query (never returned as negatives).
    ``positive_texts`` are the positives' texts, used by the near-duplicate filter and to score a
    positive that is not in the collection; when it has the same length as ``positive_ids`` it is
    taken as aligned with it.
    """

    qid: str
    text: str
    positive_ids: list[str] = field(default_factory=list)
    positive_texts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MinedNegative:
    passage_id: str
    text: str
    score: float  # retrieval score: BM25 score, cosine, or RRF score for hybrid
    rank: int  # 1-based rank in the retrieval list (known positives included in the count)
    method: str  # "bm25" | "dense" | "hybrid"

    def to_dict(self) -> dict:
        return {"passage_id": self.passage_id, "text": self.text, "score": float(self.score),
                "rank": int(self.rank), "method": self.method}


class MiningSettings(BaseModel):
    """How negatives are mined. Defaults follow NV-Retriever's TopK-PercPos (95%)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: Literal["bm25", "dense", "hybrid"] = "bm25"
    range_min: int = Field(0, ge=0, description="skip the first range_min non-positive candidates")
    range_max: int = Field(50, ge=1, description="consider candidates up to this rank (exclusive, positives not counted)")
    margin_type: Literal["relative", "absolute", "none"] = "relative"
    margin: float = Field(0.95, description="relative: drop score > pos - |pos|*(1-margin) (= margin*pos for pos>0); "
                                            "absolute: drop score > pos - margin")
    near_duplicate_threshold: float | None = Field(
        90.0, ge=0, le=100, description="drop candidates with rapidfuzz ratio or token_set_ratio >= this vs a positive; None disables")
    num_negatives: int = Field(5, ge=1)
    sampling: Literal["top", "random"] = "top"
    seed: int = 13
    model: str | None = Field(None, description="sentence-transformers name or path; None -> bundled all-MiniLM-L6-v2")
    batch_size: int = Field(64, ge=1)
    max_seq_length: int | None = Field(None, ge=8)
    device: str = "cpu"
    # BM25 / tokenizer (part of the BM25 index key)
    bm25_k1: float = Field(1.5, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    bm25_stopwords: Literal["en"] | None = "en"
    # hybrid
    rrf_k: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _check(self) -> MiningSettings:
        if self.range_min >= self.range_max:
            raise ValueError(f"range_min ({self.range_min}) must be < range_max ({self.range_max})")
        if self.num_negatives > self.range_max - self.range_min:
            raise ValueError(
                f"num_negatives ({self.num_negatives}) does not fit in the window "
                f"[range_min, range_max) = [{self.range_min}, {self.range_max})")
        if self.margin_type == "relative" and not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"a relative margin must be in [0, 1], got {self.margin}")
        if self.margin_type == "absolute" and self.margin < 0:
            raise ValueError(f"an absolute margin must be >= 0, got {self.margin}")
        return self

    def threshold(self, positive_score: float) -> float | None:
        """Candidates scoring above this are dropped as likely false negatives (None: no filter)."""
        if self.margin_type == "none":
            return None
        if self.margin_type == "relative":
            # sign-safe form of margin * pos (same as sentence-transformers' relative_margin = 1 - margin)
            return positive_score - abs(positive_score) * (1.0 - self.margin)
        return positive_score - self.margin
