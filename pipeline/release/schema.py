"""Arrow schema of a release shard (the `write` stage output) and its column groups.

Column names and types come from the column registry (`pipeline/columns.py`)."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from pipeline.columns import INFIR_COLUMNS, MINED_NEGATIVE_TYPE, VERDICT_TYPE, column_type

PROVENANCE_STRING_COLUMNS: tuple[str, ...] = ("id", "source", "query_id", "passage_id")
MODEL_PROMPT_COLUMNS: tuple[str, ...] = (
    "generator_model",
    "judge_model",
    "prompt_generate",
    "prompt_poison",
    "prompt_judge",
)

SPLITS: tuple[str, ...] = ("train", "validation", "test")

#: Columns that must be present and non-empty in every accepted row.
REQUIRED_NON_EMPTY: tuple[str, ...] = ("id", "query_id") + INFIR_COLUMNS

#: Columns the caller must provide (``split`` is computed by the writer).
INPUT_COLUMNS: tuple[str, ...] = (
    INFIR_COLUMNS
    + PROVENANCE_STRING_COLUMNS
    + ("mined_negatives", "verdicts")
    + MODEL_PROMPT_COLUMNS
)

RELEASE_SCHEMA = pa.schema(
    [pa.field(c, pa.string(), nullable=False) for c in INFIR_COLUMNS]
    + [pa.field(c, pa.string(), nullable=c not in REQUIRED_NON_EMPTY) for c in PROVENANCE_STRING_COLUMNS]
    + [
        pa.field("mined_negatives", column_type("mined_negatives")),
        pa.field("verdicts", column_type("verdicts")),
    ]
    + [pa.field(c, pa.string()) for c in MODEL_PROMPT_COLUMNS]
    + [pa.field("split", pa.string(), nullable=False)]
)

#: The `triplets` config (pipeline.release.triplets): sentence-transformers reads columns by
#: position, so this order is part of the format.
TRIPLETS_COLUMNS: tuple[str, ...] = ("anchor", "positive", "negative_1", "negative_2")
TRIPLETS_SCHEMA = pa.schema([pa.field(c, pa.string(), nullable=False) for c in TRIPLETS_COLUMNS])
ST_SCHEMA = TRIPLETS_SCHEMA  # the name earlier releases' code used


def schema_fields(schema: pa.Schema) -> list[dict]:
    """JSON-able description of a schema (for the manifest)."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def schema_fingerprint(schema: pa.Schema) -> str:
    text = "\n".join(f"{f.name}\t{f.type}\t{int(f.nullable)}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()
