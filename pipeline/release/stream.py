"""Streaming order for the release: rows grouped by split, sorted by id, in bounded memory.

Three passes, none holding the corpus:
1. `scan`: every batch is validated and cast; only per-row keys are kept (id, query_id, split,
   word counts: a few dozen bytes a row), plus the small sets the manifest needs.
2. `spill`: knowing every row's rank within its split, each row goes to the "bucket" of the
   output row group it lands in (split, shard, row group of ROW_GROUP_SIZE rows), in a temporary
   Parquet file per bucket, with its position inside the bucket.
3. `gather`: one bucket at a time, column by column, rows are put in their final order.
So the peak is about one output row group, whatever the number of rows.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import InfirError
from pipeline.release.rows import AcceptedRows
from pipeline.release.schema import INFIR_COLUMNS, INPUT_COLUMNS, RELEASE_SCHEMA, REQUIRED_NON_EMPTY, SPLITS
from pipeline.release.splits import assign_splits

ROW_GROUP_SIZE = 2_000
#: Rows waiting for their bucket file are flushed past this size.
SPILL_BYTES = 32 << 20
_POS = "__pos"
_INPUT_SCHEMA = pa.schema([f for f in RELEASE_SCHEMA if f.name != "split"])
_BY_SIZE = ["mined_negatives", "verdicts"] + [f.name for f in RELEASE_SCHEMA if f.name not in ("mined_negatives", "verdicts")]
_UNIQUE = ("source", "generator_model", "judge_model", "prompt_generate", "prompt_poison", "prompt_judge")


@dataclass
class Scan:
    rows: int
    codes: np.ndarray  # split index per row, input order
    order: np.ndarray  # input row indices sorted by id
    queries: dict[str, int]  # distinct query ids per split
    word_lengths: dict[str, list[int]]  # per INFIR column, in id order
    checks: list[str]
    unique: dict[str, list[str]]


@dataclass
class Bucket:
    split: str
    shard: int
    nshards: int
    rows: int
    path: Path
    writer: pq.ParquetWriter | None = field(default=None, repr=False)


def _cast(batch: pa.RecordBatch) -> pa.RecordBatch:
    try:
        return batch.cast(_INPUT_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InfirError(f"accepted rows do not fit the release schema: {e}") from e


def _first_empty(batch: pa.RecordBatch, c: str) -> int | None:
    col = batch.column(c)
    bad = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_length(pc.cast(col, pa.string())), 0))
    bad = pc.fill_null(bad, True)
    return pc.index(bad, True).as_py() if pc.any(bad).as_py() else None


def scan(rows: AcceptedRows, seed: int, ratios: tuple[float, float, float]) -> Scan:
    """Pass 1. Errors are raised in the order of the in-memory writer: empty fields, duplicates, schema."""
    ids, qids, codes = [], [], []
    lengths: dict[str, list[np.ndarray]] = {c: [] for c in INFIR_COLUMNS}
    first_bad: dict[str, int] = {}
    cast_error: InfirError | None = None
    checks: set[str] = set()
    unique: dict[str, set[str]] = {c: set() for c in _UNIQUE}
    code_of = {s: i for i, s in enumerate(SPLITS)}
    offset = 0
    for batch in rows.batches(INPUT_COLUMNS):
        for c in REQUIRED_NON_EMPTY:
            if c not in first_bad and (i := _first_empty(batch, c)) is not None:
                first_bad[c] = offset + i
        offset += batch.num_rows
        if cast_error is None:
            try:
                batch = _cast(batch)
            except InfirError as e:
                cast_error = e
        if first_bad or cast_error:
            # Only the error message is still needed; the ids keep duplicate detection exact.
            ids.append(pc.cast(batch.column("id"), pa.string()))
            continue
        ids.append(batch.column("id"))
        qids.append(batch.column("query_id"))
        split = assign_splits(batch.column("query_id").to_pylist(), seed, ratios)
        codes.append(np.fromiter((code_of[s] for s in split), np.int8, len(split)))
        for c in INFIR_COLUMNS:
            words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(batch.column(c)))
            lengths[c].append(pc.list_value_length(words).to_numpy(zero_copy_only=False))
        flat = pc.list_flatten(batch.column("verdicts"))
        if len(flat):
            checks.update(v for v in pc.unique(pc.struct_field(flat, "check")).to_pylist() if v)
        for c in _UNIQUE:
            unique[c].update(v for v in pc.unique(batch.column(c)).to_pylist() if v)
    all_ids = pa.chunked_array(ids, pa.string()).combine_chunks() if ids else pa.array([], pa.string())
    for c in REQUIRED_NON_EMPTY:
        if c in first_bad:
            idx = first_bad[c]
            raise InfirError(
                f"accepted row {idx} (id {all_ids[idx].as_py()!r}) has an empty {c!r}; every release row needs it"
            )
    if pc.count_distinct(all_ids).as_py() != len(all_ids):
        counts = pc.value_counts(all_ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise InfirError(f"duplicate row id {dup!r} in accepted rows; ids must be unique")
    if cast_error is not None:
        raise cast_error
    code_arr = np.concatenate(codes) if codes else np.zeros(0, np.int8)
    order = pc.sort_indices(all_ids).to_numpy()
    del all_ids
    all_qids = pa.chunked_array(qids, pa.string())
    queries = {}
    for k, s in enumerate(SPLITS):
        mask = pa.array(code_arr == k)
        queries[s] = pc.count_distinct(all_qids.filter(mask)).as_py() if code_arr.size else 0
    return Scan(
        rows=len(code_arr),
        codes=code_arr,
        order=order,
        queries=queries,
        word_lengths={c: np.concatenate(v)[order].tolist() if v else [] for c, v in lengths.items()},
        checks=sorted(checks),
        unique={c: sorted(v) for c, v in unique.items()},
    )


def _layout(sc: Scan, max_rows: int) -> tuple[list[tuple[str, int, int, int]], np.ndarray, np.ndarray]:
    """Buckets in output order as (split, shard, nshards, rows), and each input row's bucket and position."""
    bucket_of = np.empty(sc.rows, np.int64)
    pos_of = np.empty(sc.rows, np.int64)
    sorted_codes = sc.codes[sc.order]
    groups_per_shard = math.ceil(max_rows / ROW_GROUP_SIZE)
    buckets: list[tuple[str, int, int, int]] = []
    for k, s in enumerate(SPLITS):
        members = sc.order[sorted_codes == k]  # this split's rows, by id
        n = len(members)
        if not n:
            continue
        rank = np.arange(n)
        key = (rank // max_rows) * groups_per_shard + (rank % max_rows) // ROW_GROUP_SIZE
        keys, starts, counts = np.unique(key, return_index=True, return_counts=True)
        nshards = math.ceil(n / max_rows)
        local = np.searchsorted(keys, key)
        bucket_of[members] = len(buckets) + local
        pos_of[members] = rank - starts[local]
        buckets += [(s, int(kk // groups_per_shard), nshards, int(cnt)) for kk, cnt in zip(keys, counts)]
    return buckets, bucket_of, pos_of


def spill(rows: AcceptedRows, sc: Scan, max_rows: int, tmp: Path) -> list[Bucket]:
    """Pass 2: every row into its bucket's temporary file (written in pieces of SPILL_BYTES)."""
    layout, bucket_of, pos_of = _layout(sc, max_rows)
    tmp.mkdir(parents=True, exist_ok=True)
    buckets = [Bucket(s, shard, nsh, n, tmp / f"bucket-{b:06d}.parquet") for b, (s, shard, nsh, n) in enumerate(layout)]
    schema = RELEASE_SCHEMA.append(pa.field(_POS, pa.int64()))
    split_names = pa.array(SPLITS, pa.string())
    pending: dict[int, list[pa.RecordBatch]] = {}
    pending_bytes = 0

    def flush() -> None:
        for b, parts in sorted(pending.items()):
            bk = buckets[b]
            if bk.writer is None:
                # lz4, no dictionary: a scratch file read back once, speed over size
                bk.writer = pq.ParquetWriter(bk.path, schema, compression="lz4", use_dictionary=False,
                                             write_statistics=False)
            with named_io(bk.path):
                bk.writer.write_table(pa.Table.from_batches(parts, schema), row_group_size=1 << 30)
        pending.clear()

    offset = 0
    try:
        for batch in rows.batches(INPUT_COLUMNS):
            n = batch.num_rows
            b = bucket_of[offset:offset + n]
            arrays = _cast(batch).columns + [
                pc.take(split_names, pa.array(sc.codes[offset:offset + n])),
                pa.array(pos_of[offset:offset + n]),
            ]
            offset += n
            perm = np.argsort(b, kind="stable")
            grouped = pa.RecordBatch.from_arrays(arrays, schema=schema).take(pa.array(perm))
            ids, starts = np.unique(b[perm], return_index=True)
            ends = list(starts[1:]) + [n]
            for bid, lo, hi in zip(ids.tolist(), starts.tolist(), ends):
                piece = grouped.slice(lo, hi - lo)
                pending.setdefault(bid, []).append(piece)
            pending_bytes += grouped.nbytes
            if pending_bytes > SPILL_BYTES:
                flush()
                pending_bytes = 0
        flush()
    finally:
        for bk in buckets:
            if bk.writer is not None:
                with named_io(bk.path):
                    bk.writer.close()
                bk.writer = None
    return buckets


@contextlib.contextmanager
def named_io(path: Path) -> Iterator[None]:
    """Arrow's I/O errors ("Error writing bytes to file: No space left on device") carry no file
    name: give them `path`, so that the user learns where the disk filled up."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, os.strerror(e.errno) if e.errno else (e.strerror or str(e)), str(path)) from e


def gather(bk: Bucket) -> pa.Table:
    """Pass 3: one bucket's rows in id order, one contiguous chunk per column, as the old writer
    wrote them (page boundaries in Parquet depend on the chunking, and releases must stay byte-identical)."""
    # Freed pages of the previous bucket go back first; the allocator would otherwise keep them.
    pa.default_memory_pool().release_unused()
    pos = pq.read_table(bk.path, columns=[_POS]).column(0).to_numpy()
    where = np.empty(len(pos), np.int64)
    where[pos] = np.arange(len(pos))
    idx = pa.array(where)
    arrays: dict[str, pa.Array] = {}
    # Largest column first: while it is reordered (source + copy), nothing else is held yet.
    for name in _BY_SIZE:
        col = pq.read_table(bk.path, columns=[name], use_threads=False).column(0).combine_chunks()
        arrays[name] = col.take(idx)
        del col
    os.unlink(bk.path)
    return pa.Table.from_arrays([arrays[f.name] for f in RELEASE_SCHEMA], schema=RELEASE_SCHEMA)
