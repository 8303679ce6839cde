"""Arrow schema of a release shard (the `write` stage output) and its column groups."""

from __future__ import annotations

import hashlib

import pyarrow as pa

#: The seven InF-IR columns, named as in the released InF-IR dataset.
INFIR_COLUMNS: tuple[str, ...] = (
    "query_positive",
    "instruction_positive",
    "document_positive",
    "instruction_negative",
    "hard_negative_document_1",
    "query_negative",
    "hard_negative_document_2",
)

PROVENANCE_STRING_COLUMNS: tuple[str, ...] = ("id", "source", "query_id", "passage_id")
MODEL_PROMPT_COLUMNS: tuple[str, ...] = (
    "generator_model",
    "judge_model",
    "prompt_generate",
    "prompt_poison",
    "prompt_judge",
)

MINED_NEGATIVE_TYPE = pa.struct(
    [
        pa.field("passage_id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("rank", pa.int32()),
        pa.field("method", pa.string()),
    ]
)
VERDICT_TYPE = pa.struct(
    [
        pa.field("check", pa.string()),
        pa.field("passed", pa.bool_()),
        pa.field("reason", pa.string()),
    ]
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
        pa.field("mined_negatives", pa.list_(pa.field("item", MINED_NEGATIVE_TYPE))),
        pa.field("verdicts", pa.list_(pa.field("item", VERDICT_TYPE))),
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
