"""The release's `triplets` config: the InF-IR three-pair scheme as sentence-transformers trains it.

Per row, in row order: (Q+ I+ -> P+ | HN1, HN2), (Q+ I- -> HN1 | P+, HN2), (Q- I+ -> HN2 | P+, HN1),
columns ``anchor, positive, negative_1, negative_2``. MultipleNegativesRankingLoss reads its
inputs by position (first = anchor, second = positive, the rest = negatives), so the column order
is the contract; the anchor is the query text already formatted with the release's template.
This is the same pairing `infir train` builds (pipeline.train.data.build_training_pairs).
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.release.schema import INFIR_COLUMNS, TRIPLETS_SCHEMA

__all__ = ["TRIPLETS_DIR", "triplets_table", "triplets_path"]

TRIPLETS_DIR = "triplets"


def triplets_path(split: str) -> str:
    """Release-relative path of one split's triplets file."""
    return f"{TRIPLETS_DIR}/{split}.parquet"


def triplets_table(t: pa.Table, template: str) -> pa.Table:
    """Three rows per input row, in row order (see the module docstring)."""

    def fmt(q: str, i: str) -> str:
        return template.format(query=q, instruction=i).strip()

    cols = {c: t.column(c).to_pylist() for c in INFIR_COLUMNS}
    out: dict[str, list[str]] = {"anchor": [], "positive": [], "negative_1": [], "negative_2": []}
    for k in range(t.num_rows):
        qp, ip, pp = cols["query_positive"][k], cols["instruction_positive"][k], cols["document_positive"][k]
        ineg, hn1 = cols["instruction_negative"][k], cols["hard_negative_document_1"][k]
        qn, hn2 = cols["query_negative"][k], cols["hard_negative_document_2"][k]
        out["anchor"] += [fmt(qp, ip), fmt(qp, ineg), fmt(qn, ip)]
        out["positive"] += [pp, hn1, hn2]
        out["negative_1"] += [hn1, pp, pp]
        out["negative_2"] += [hn2, hn2, hn1]
    return pa.table(out, schema=TRIPLETS_SCHEMA)
