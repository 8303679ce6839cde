"""Hard-negative mining over a Parquet passage collection: BM25 (bm25s), dense (sentence-transformers +
faiss) and hybrid (reciprocal-rank fusion). See docs/retrieval.md."""

from .collection import collection_fingerprint
from .errors import RetrievalError
from .mining import mine_hard_negatives, neighbours
from .types import MinedNegative, MiningQuery, MiningSettings

__all__ = [
    "MinedNegative",
    "MiningQuery",
    "MiningSettings",
    "RetrievalError",
    "collection_fingerprint",
    "mine_hard_negatives",
    "neighbours",
]
