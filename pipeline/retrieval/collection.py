"""The passage collection: streaming reads, fingerprints, and the on-disk doc store.

The collection is a list of Parquet files with string columns ``passage_id``, ``title``, ``text``.
It is only ever read in record batches. What the retrieval indexes keep is:

* ``docs-<fp>/docs.arrow``: an uncompressed Arrow IPC file (``passage_id``, ``text``) written batch by
  batch and read back memory-mapped, so fetching the text of a few candidate rows costs a page-in,
  never a load of the collection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import RetrievalError

REQUIRED_COLUMNS = ("passage_id", "title", "text")
DOCSTORE_VERSION = 1
READ_BATCH = 8192


def collection_fingerprint(paths: Sequence[str | os.PathLike], content: bool = False) -> str:
    """sha256 hex over the collection files, in the given order.

    ``content=False`` (default, cheap): file name, size and mtime (ns) of each file.
    ``content=True``: file name and the sha256 of each file's bytes (stable across copies/touches).
    A caller that already has a content hash of the collection (e.g. from ``_SUCCESS.json`` of the
    source stage) should pass that instead.
    """
    if not paths:
        raise RetrievalError("the collection is empty: no Parquet files given")
    h = hashlib.sha256(b"infir-collection-v1\0")
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise RetrievalError(f"{p}: collection file not found") from None
        h.update(p.name.encode() + b"\0")
        if content:
            fh = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    fh.update(block)
            h.update(fh.digest())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()


def count_rows(paths: Sequence[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def iter_collection(
    paths: Sequence[str | os.PathLike], batch_size: int = READ_BATCH
) -> Iterator[tuple[pa.Array, pa.Array, pa.Array]]:
    """Yield ``(passage_id, title, text)`` string arrays, one record batch at a time (nulls -> "")."""
    for p in paths:
        p = Path(p)
        try:
            pf = pq.ParquetFile(p)
        except FileNotFoundError:
            raise RetrievalError(f"{p}: collection file not found") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise RetrievalError(f"{p}: not a readable Parquet file ({e})") from None
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise RetrievalError(f"{p}: collection file lacks column(s) {', '.join(missing)} (has {', '.join(names)})")
        for batch in pf.iter_batches(batch_size=batch_size, columns=list(REQUIRED_COLUMNS)):
            cols = []
            for name in REQUIRED_COLUMNS:
                a = batch.column(name)
                if not pa.types.is_string(a.type) and not pa.types.is_large_string(a.type):
                    a = pc.cast(a, pa.string())
                cols.append(pc.fill_null(a, ""))
            yield cols[0], cols[1], cols[2]


def index_text(title: pa.Array, text: pa.Array) -> list[str]:
    """The string a passage is indexed/encoded as: ``title + " " + text``, or ``text`` when no title."""
    joined = pc.binary_join_element_wise(title, text, " ")
    return pc.if_else(pc.equal(title, ""), text, joined).to_pylist()


def _atomic_dir(final: Path) -> Path:
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir(parents=True)
    return tmp


def _publish_dir(tmp: Path, final: Path) -> bool:
    """Rename ``tmp`` to ``final``; if another process won the race, drop ours. True if ours landed."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


class DocStoreWriter:
    """Consumes collection batches; writes ``docs.arrow`` (passage_id, text)."""

    schema = pa.schema([("passage_id", pa.string()), ("text", pa.string())])

    def __init__(self, final_dir: Path):
        self.final_dir = final_dir
        self.tmp = _atomic_dir(final_dir)
        self._sink = pa.OSFile(str(self.tmp / "docs.arrow"), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self.rows = 0

    def add(self, pid: pa.Array, title: pa.Array, text: pa.Array, joined: list[str] | None = None) -> None:
        self._writer.write_batch(pa.record_batch([pid, text], schema=self.schema))
        self.rows += len(pid)

    def finish(self, fingerprint: str) -> Path:
        self._writer.close()
        self._sink.close()
        (self.tmp / "meta.json").write_text(
            json.dumps({"version": DOCSTORE_VERSION, "fingerprint": fingerprint, "rows": self.rows})
        )
        _publish_dir(self.tmp, self.final_dir)
        return self.final_dir

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class DocStore:
    """Memory-mapped (passage_id, text) table of a collection, addressed by row."""

    def __init__(self, path: Path):
        self.path = path
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("version") != DOCSTORE_VERSION:
            raise RetrievalError(f"{path}: doc store version {meta.get('version')} != {DOCSTORE_VERSION}; delete it")
        self._mm = pa.memory_map(str(path / "docs.arrow"), "r")
        self.table = pa.ipc.open_file(self._mm).read_all()
        self.num_rows = self.table.num_rows
        self._ids = self.table.column("passage_id")
        self._text = self.table.column("text")
        self._offsets: dict[int, np.ndarray] = {}  # per column: the first row of each chunk

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (path / "meta.json").exists()

    def rows_by_id(self, passage_ids: Iterable[str]) -> dict[str, list[int]]:
        """Rows of each given id that is in the collection (all rows, if the collection repeats an id).

        One pass over the id column for any number of ids; ids not in the collection are absent.
        """
        ids = list(dict.fromkeys(passage_ids))
        if not ids:
            return {}
        mask = pc.is_in(self._ids, value_set=pa.array(ids, pa.string()))
        rows = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False)))
        out: dict[str, list[int]] = {}
        for pid, r in zip(self.ids(rows), rows.tolist()):
            out.setdefault(pid, []).append(r)
        return out

    def ids(self, rows: np.ndarray) -> list[str]:
        return self._take(self._ids, rows)

    def texts(self, rows: np.ndarray) -> list[str]:
        return self._take(self._text, rows)

    def _take(self, col: pa.ChunkedArray, rows: np.ndarray) -> list:
        """Values at ``rows``, in the order given, chunk by chunk.

        ``ChunkedArray.take`` concatenates the column first (pyarrow 26): on a 1M-passage store that
        copied ~550 MiB of text per call and took 2 s for 8,000 rows; per chunk it is 0.15 s and no copy.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        if col.num_chunks == 1:
            return col.chunk(0).take(pa.array(rows)).to_pylist()
        offsets = self._offsets.get(id(col))
        if offsets is None:
            offsets = self._offsets[id(col)] = np.cumsum([0] + [len(c) for c in col.chunks], dtype=np.int64)
        if rows.min() < 0 or rows.max() >= self.num_rows:
            raise IndexError(f"{self.path}: row out of range [0, {self.num_rows})")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        chunk = np.searchsorted(offsets, srt, side="right") - 1
        bounds = np.flatnonzero(np.diff(chunk)) + 1
        values: list = []
        for part in np.split(np.arange(len(srt)), bounds):
            c = int(chunk[part[0]])
            values.extend(col.chunk(c).take(pa.array(srt[part] - offsets[c])).to_pylist())
        out: list = [None] * len(rows)
        for i, v in zip(order.tolist(), values):
            out[i] = v
        return out
