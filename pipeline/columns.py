"""The column registry: every column a stage can add, with its Arrow type, defined once.

A stage declares the names of the columns it adds (`Stage.adds`); its schema is its upstream's
plus those (`schema_of`). The release schema (`pipeline/release/schema.py`) and the InF-IR column
names are taken from here, so a type is never spelled twice. A leaf module: pyarrow only.
"""

from __future__ import annotations

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
#: What one row's LLM call cost when it was made (cache hits included): `usage_<stage>` columns.
#: cached_tokens (of prompt_tokens: the provider's prompt cache, billed at its cached price) and
#: reasoning_tokens (of completion_tokens: hidden reasoning, billed as output) are shown apart.
USAGE_TYPE = pa.struct(
    [("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
     ("cached_tokens", pa.int64()), ("reasoning_tokens", pa.int64())]
)
#: The cascade's first judge, per check: its verdict, reason and confidence.
FIRST_VERDICT_TYPE = pa.struct(
    [
        pa.field("check", pa.string()),
        pa.field("passed", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("confidence", pa.float64()),
    ]
)

#: Every column that is not a plain string. A name absent here is `pa.string()`.
_TYPES: dict[str, pa.DataType] = {
    "positive_ids": pa.list_(pa.string()),
    "mined_negatives": pa.list_(MINED_NEGATIVE_TYPE),
    "verdicts": pa.list_(VERDICT_TYPE),
    "failed_checks": pa.list_(pa.string()),
    "failed_filters": pa.list_(pa.string()),
    "accepted": pa.bool_(),
    "first_judge_verdicts": pa.list_(FIRST_VERDICT_TYPE),
}


#: The column in which a stage records the deterministic filters a row failed: the judging stage
#: does not send such a row and rejects it with those names.
REJECTIONS = "failed_filters"


def usage_column(stage: str) -> str:
    return f"usage_{stage}"


def error_column(stage: str) -> str:
    return f"{stage}_error"


def column_type(name: str) -> pa.DataType:
    if name.startswith("usage_"):
        return USAGE_TYPE
    return _TYPES.get(name, pa.string())


def fields(names: tuple[str, ...] | list[str]) -> list[pa.Field]:
    """Arrow fields for column names, typed from the registry."""
    return [pa.field(n, column_type(n)) for n in names]


def usage_columns(schema: pa.Schema) -> list[str]:
    """The per-row usage columns of a stage table, in pipeline order."""
    return [f.name for f in schema if f.name.startswith("usage_")]
