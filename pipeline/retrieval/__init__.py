"""Hard-negative mining over a Parquet passage collection: BM25 (bm25s), dense (sentence-transformers +
faiss) and hybrid (reciprocal-rank fusion). See docs/retrieval.md."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .collection import collection_fingerprint
    from .errors import RetrievalError
    from .mining import mine_hard_negatives, neighbours
    from .types import MinedNegative, MiningQuery, MiningSettings

# Resolved on first use (PEP 562): every `infir` process imports `retrieval.types` through the
# config, and importing the miners here would load bm25s and scipy (~0.35 s) into each of them,
# `infir --help` and the stages that never mine included.
_HOME = {
    "MinedNegative": "types",
    "MiningQuery": "types",
    "MiningSettings": "types",
    "RetrievalError": "errors",
    "collection_fingerprint": "collection",
    "mine_hard_negatives": "mining",
    "neighbours": "mining",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
