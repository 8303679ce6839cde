"""The writer's input as a stream of record batches: the verify stage's shards, or a table.

The writer reads its input twice (keys, then rows), so it takes a re-readable source rather than
a table: reading `verify/accepted/part-*.parquet` batch by batch keeps its memory independent of
the number of accepted rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InfirError
from pipeline.release.schema import INPUT_COLUMNS

#: Rows per batch read: a few MiB of text, mined negatives included.
BATCH_ROWS = 2048


class AcceptedRows:
    """Accepted rows, in order: the shards in the given order, each shard's rows in file order."""

    def __init__(self, source: pa.Table | Sequence[Path | str]):
        if isinstance(source, pa.Table):
            self._table: pa.Table | None = source
            self._paths: list[Path] = []
        else:
            self._table = None
            self._paths = [Path(p) for p in source]
            if not self._paths:
                raise InfirError("no accepted shards to release")

    def check_columns(self) -> None:
        if self._table is not None:
            self._require(self._table.column_names, "accepted table lacks")
            return
        for p in self._paths:
            try:
                names = pq.read_schema(p).names
            except (pa.ArrowInvalid, OSError) as e:
                raise InfirError(f"{p}: unreadable Parquet shard ({e}); rerun verify with --force") from None
            self._require(names, f"{p}: accepted shard lacks")

    @staticmethod
    def _require(names: list[str], what: str) -> None:
        missing = [c for c in INPUT_COLUMNS if c not in names]
        if missing:
            raise InfirError(f"{what} release column(s): {', '.join(missing)}")

    def batches(self, columns: Sequence[str] = INPUT_COLUMNS) -> Iterator[pa.RecordBatch]:
        if self._table is not None:
            yield from self._table.select(list(columns)).to_batches(max_chunksize=BATCH_ROWS)
            return
        for p in self._paths:
            try:
                with pq.ParquetFile(p) as f:
                    for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=list(columns), use_threads=False):
                        yield batch.select(list(columns))
            except (pa.ArrowInvalid, OSError) as e:
                raise InfirError(f"{p}: unreadable Parquet shard ({e}); rerun verify with --force") from None
