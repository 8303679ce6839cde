from pipeline.store.ids import canonical_json, content_id, file_fingerprint, identity_hash, sha256_file
from pipeline.store.shards import (
    StageOutput,
    iter_tables,
    read_shard,
    read_stage_table,
    read_success,
    require_stage,
    shard_name,
    stage_fingerprint,
    write_json_atomic,
    write_parquet_atomic,
)

__all__ = [
    "StageOutput",
    "canonical_json",
    "content_id",
    "file_fingerprint",
    "iter_tables",
    "read_shard",
    "read_stage_table",
    "read_success",
    "require_stage",
    "shard_name",
    "sha256_file",
    "identity_hash",
    "stage_fingerprint",
    "write_json_atomic",
    "write_parquet_atomic",
]
