"""Release: versioned Parquet shards + manifest + dataset card, verification, Hub publishing."""

from pipeline.release.publish import PublishResult, publish_release
from pipeline.release.schema import INFIR_COLUMNS, RELEASE_SCHEMA, ST_SCHEMA, TRIPLETS_SCHEMA
from pipeline.release.splits import assign_splits
from pipeline.release.verify import VerifyReport, verify_release
from pipeline.release.triplets import triplets_table
from pipeline.release.writer import DEFAULT_ST_TEMPLATE, ReleaseResult, bump_version, write_release

__all__ = [
    "DEFAULT_ST_TEMPLATE",
    "INFIR_COLUMNS",
    "RELEASE_SCHEMA",
    "ST_SCHEMA",
    "TRIPLETS_SCHEMA",
    "PublishResult",
    "ReleaseResult",
    "VerifyReport",
    "assign_splits",
    "bump_version",
    "publish_release",
    "triplets_table",
    "verify_release",
    "write_release",
]
