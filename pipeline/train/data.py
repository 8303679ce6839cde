"""Release reading and InF-IR training-pair construction."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import InfirError

__all__ = [
    "INFIR_COLUMNS",
    "DEFAULT_TEMPLATE",
    "SPLITS",
    "load_release_split",
    "split_shards",
    "check_template",
    "format_query",
    "build_training_pairs",
    "clean_text",
    "TrainingPairs",
]

from pipeline.release.schema import INFIR_COLUMNS
DEFAULT_TEMPLATE = "{query} {instruction}"
SPLITS = ("train", "validation", "test")


def split_shards(release_dir: str | Path, split: str) -> list[Path]:
    """The shard files ``<release_dir>/data/<split>-*.parquet``, sorted by name."""
    data_dir = Path(release_dir) / "data"
    if not data_dir.is_dir():
        raise InfirError(f"{data_dir}: not a release data directory (expected {data_dir}/<split>-NNNNN-of-NNNNN.parquet)")
    shards = sorted(data_dir.glob(f"{split}-*.parquet"))
    if not shards:
        present = sorted({p.name.split("-", 1)[0] for p in data_dir.glob("*.parquet")})
        raise InfirError(f"{data_dir}: no shards for split {split!r} (splits present: {', '.join(present) or 'none'})")
    return shards


def load_release_split(
    release_dir: str | Path,
    split: str,
    columns: Sequence[str] | None = None,
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Read one split of a release as a list of row dicts (shards in name order, rows in file order).

    The seven InF-IR columns must be present; ``columns`` restricts what is read (the InF-IR
    columns are always added). Raises :class:`InfirError` naming the file on a missing column.
    """
    wanted: list[str] | None = None
    if columns is not None:
        wanted = list(dict.fromkeys([*INFIR_COLUMNS, *columns]))
    rows: list[dict[str, Any]] = []
    for shard in split_shards(release_dir, split):
        try:
            schema = pq.read_schema(shard)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise InfirError(f"{shard}: not a readable parquet file ({exc})") from exc
        missing = [c for c in INFIR_COLUMNS if c not in schema.names]
        if missing:
            raise InfirError(f"{shard}: missing column(s) {', '.join(missing)}")
        read_cols = None if wanted is None else [c for c in wanted if c in schema.names]
        table = pq.read_table(shard, columns=read_cols)
        rows.extend(table.to_pylist())
        if max_rows is not None and len(rows) >= max_rows:
            return rows[:max_rows]
    return rows


def check_template(template: str) -> str:
    """Validate a query template: it must use exactly the fields ``{query}`` and ``{instruction}``."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from exc
    if fields != {"query", "instruction"}:
        raise ValueError(f"template {template!r} must use exactly {{query}} and {{instruction}}, found {sorted(fields)}")
    return template


def format_query(template: str, query: str, instruction: str | None) -> str:
    """The text a model sees for (query, instruction); ``instruction=None`` means query only (ablation)."""
    if instruction is None:
        return query.strip()
    return template.format(query=query, instruction=instruction).strip()


def clean_text(value: Any) -> str:
    """A text cell stripped; a missing or non-text cell is "" (the row counts as incomplete)."""
    return value.strip() if isinstance(value, str) else ""


class TrainingPairs:
    """Columns for MNRL: ``anchor``, ``positive``, ``negative_1`` ... ``negative_n`` (all equal length)."""

    def __init__(self, columns: dict[str, list[str]], rows_used: int, rows_skipped: int, skip_reasons: dict[str, int]):
        self.columns = columns
        self.rows_used = rows_used
        self.rows_skipped = rows_skipped
        self.skip_reasons = skip_reasons

    def __len__(self) -> int:
        return len(self.columns["anchor"])

    @property
    def num_negatives(self) -> int:
        return len(self.columns) - 2


def build_training_pairs(
    rows: Sequence[dict[str, Any]],
    template: str = DEFAULT_TEMPLATE,
    use_mined_negatives: bool = False,
    num_mined_negatives: int = 1,
) -> TrainingPairs:
    """Three (text, passage) pairs per row, each with the row's other two passages as hard negatives.

    (Q+ I+ -> P+ | HN1, HN2), (Q+ I- -> HN1 | P+, HN2), (Q- I+ -> HN2 | P+, HN1).
    With ``use_mined_negatives``, each pair also gets the row's first ``num_mined_negatives`` mined
    negatives (distinct texts, none equal to the row's three passages). MNRL needs the same number
    of columns in every row, so a row with fewer mined negatives than that is skipped (counted as
    ``too_few_mined_negatives``): capping the count at the poorest row instead would let one row
    without mined negatives turn them off for the whole training, silently. A row is also skipped
    if a field is empty, its three passages are not distinct, or two of its three query texts
    coincide (a contradictory pair).
    """
    check_template(template)
    skip: dict[str, int] = {}
    kept: list[tuple[list[str], list[str], list[str]]] = []  # (anchors, passages, mined)
    for row in rows:
        vals = {c: clean_text(row.get(c)) for c in INFIR_COLUMNS}
        empty = [c for c, v in vals.items() if not v]
        if empty:
            skip["empty_field"] = skip.get("empty_field", 0) + 1
            continue
        passages = [vals["document_positive"], vals["hard_negative_document_1"], vals["hard_negative_document_2"]]
        anchors = [
            format_query(template, vals["query_positive"], vals["instruction_positive"]),
            format_query(template, vals["query_positive"], vals["instruction_negative"]),
            format_query(template, vals["query_negative"], vals["instruction_positive"]),
        ]
        if len(set(passages)) < 3:
            skip["duplicate_passages"] = skip.get("duplicate_passages", 0) + 1
            continue
        if len(set(anchors)) < 3:
            skip["duplicate_queries"] = skip.get("duplicate_queries", 0) + 1
            continue
        mined: list[str] = []
        if use_mined_negatives:
            seen = set(passages)
            for m in row.get("mined_negatives") or []:
                text = clean_text(m.get("text") if isinstance(m, dict) else None)
                if text and text not in seen:
                    seen.add(text)
                    mined.append(text)
            if len(mined) < num_mined_negatives:
                skip["too_few_mined_negatives"] = skip.get("too_few_mined_negatives", 0) + 1
                continue
        kept.append((anchors, passages, mined))

    n_mined = num_mined_negatives if use_mined_negatives else 0
    cols: dict[str, list[str]] = {"anchor": [], "positive": []}
    for i in range(2 + n_mined):
        cols[f"negative_{i + 1}"] = []
    for anchors, passages, mined in kept:
        for j in range(3):
            others = [passages[x] for x in range(3) if x != j]
            cols["anchor"].append(anchors[j])
            cols["positive"].append(passages[j])
            for i, neg in enumerate(others + mined[:n_mined]):
                cols[f"negative_{i + 1}"].append(neg)
    return TrainingPairs(cols, rows_used=len(kept), rows_skipped=sum(skip.values()), skip_reasons=skip)
