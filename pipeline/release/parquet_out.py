"""One release Parquet file, written row group by row group into a hidden temp file and renamed into
place on close; I/O errors name the file."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.release import stream
from pipeline.fileio import sha256_file

PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 9

_PARQUET_OPTIONS = dict(
    compression=PARQUET_COMPRESSION,
    compression_level=PARQUET_COMPRESSION_LEVEL,
    use_dictionary=True,
    write_statistics=True,
)



class ParquetOut:
    """One Parquet file written piece by piece, byte-identical to `pq.write_table(whole,
    row_group_size=ROW_GROUP_SIZE)`: each row group is cut from one contiguous table, since
    Parquet page boundaries depend on how the arrays are chunked."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.rows = 0
        self._tmp = path.with_name(f".{path.name}.tmp")
        with stream.named_io(self.path):
            self._writer = pq.ParquetWriter(self._tmp, schema, **_PARQUET_OPTIONS)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        group = stream.ROW_GROUP_SIZE
        if self._pending_rows >= group:
            self._flush(self._pending_rows - self._pending_rows % group)

    def _flush(self, n: int) -> None:
        whole = pa.concat_tables(self._pending).combine_chunks()
        with stream.named_io(self.path):
            self._writer.write_table(whole.slice(0, n), row_group_size=stream.ROW_GROUP_SIZE)
        rest = whole.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> dict:
        if self._pending_rows:
            self._flush(self._pending_rows)
        with stream.named_io(self.path):
            self._writer.close()
        os.replace(self._tmp, self.path)
        return {"bytes": self.path.stat().st_size, "sha256": sha256_file(self.path)}
