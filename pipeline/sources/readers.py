"""Streaming readers for BEIR jsonl, MS MARCO tsv, jsonl/parquet with a column map, and HF datasets.

Every reader yields records with the file and line they came from; a line that cannot be read
goes to the quarantine with its reason. A missing file or a missing column is fatal and named.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sources.settings import ColumnMap, HFSource, SourceSettings
from pipeline.errors import InfirError
from pipeline.sources.quarantine import Quarantine


@dataclass(slots=True)
class Record:
    id: str
    text: str
    title: str
    file: str
    line: int


@dataclass(slots=True)
class Qrel:
    qid: str
    pid: str
    score: int
    file: str
    line: int


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InfirError(f"{path}: {what} file not found")
    return path


_WIDE_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def _open_text_lines(path: Path, q: Quarantine) -> Iterator[tuple[int, str]]:
    """Lines of a (possibly gzipped) text file, decoded one by one so a bad byte costs one line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if n == 1:
                    # A byte order mark: UTF-8's is dropped (editors on Windows add it); a UTF-16/32
                    # file would otherwise be quarantined line by line as garbage.
                    for bom, name in _WIDE_BOMS.items():
                        if raw.startswith(bom):
                            raise InfirError(f"{path}: encoded as {name} (byte order mark); convert it to UTF-8")
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    q.add(path, n, f"not UTF-8: invalid byte at column {e.start + 1}", raw.decode("utf-8", "replace"))
                    continue
                line = line.rstrip("\r\n")
                if line.strip():
                    yield n, line
    except (OSError, EOFError, zlib.error) as e:
        raise InfirError(f"{path}: cannot read: {e}") from None


def _as_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None


def read_jsonl(path: Path, cols: ColumnMap, q: Quarantine, with_title: bool) -> Iterator[Record]:
    for n, obj, line in _jsonl_objects(path, q):
        rid, text = _as_str(obj.get(cols.id)), obj.get(cols.text)
        if rid is None or not rid.strip():
            q.add(path, n, f"missing id: field '{cols.id}'", line)
            continue
        if not isinstance(text, str):
            q.add(path, n, f"missing text: field '{cols.text}'", line)
            continue
        title = obj.get(cols.title) if (with_title and cols.title) else ""
        yield Record(rid.strip(), text, title if isinstance(title, str) else "", str(path), n)


def read_tsv_pairs(path: Path, q: Quarantine) -> Iterator[Record]:
    """MS MARCO `id<TAB>text` files (collection.tsv, queries.tsv)."""
    for n, line in _open_text_lines(path, q):
        parts = line.split("\t")
        if len(parts) != 2:
            q.add(path, n, f"wrong column count: expected 2 tab-separated columns, found {len(parts)}", line)
            continue
        if not parts[0].strip():
            q.add(path, n, "missing id", line)
            continue
        yield Record(parts[0].strip(), parts[1], "", str(path), n)


def read_qrels_text(path: Path, q: Quarantine) -> Iterator[Qrel]:
    """qrels as TREC (`qid 0 pid rel`) or tsv (`qid pid [score]`), with an optional header."""
    for n, line in _open_text_lines(path, q):
        parts = line.split()
        if len(parts) == 4:
            qid, _, pid, score = parts
        elif len(parts) in (2, 3):
            qid, pid = parts[0], parts[1]
            score = parts[2] if len(parts) == 3 else "1"
        else:
            q.add(path, n, f"wrong column count: expected 2, 3 or 4 columns, found {len(parts)}", line)
            continue
        try:
            value = int(float(score))
        except ValueError:
            if n == 1:
                continue  # a header such as `query-id corpus-id score`
            q.add(path, n, f"bad relevance score: {score!r}", line)
            continue
        yield Qrel(qid, pid, value, str(path), n)


def _table_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: corrupt Parquet data after row {n} ({e})") from None


def _check_columns(path: Path, present: list[str], needed: list[str | None]) -> None:
    missing = [c for c in needed if c and c not in present]
    if missing:
        raise InfirError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(present)})")


def _parquet_columns(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: not a readable Parquet file ({e})") from None


def read_parquet_records(path: Path, cols: ColumnMap, q: Quarantine, with_title: bool) -> Iterator[Record]:
    _check_columns(path, _parquet_columns(path), [cols.id, cols.text])
    yield from _records_from_rows(_table_rows(path), cols, q, with_title, str(path))


def _records_from_rows(rows, cols: ColumnMap, q: Quarantine, with_title: bool, file: str) -> Iterator[Record]:
    for n, row in rows:
        rid, text = _as_str(row.get(cols.id)), row.get(cols.text)
        if rid is None or not rid.strip():
            q.add(file, n, f"missing id: column '{cols.id}'", json.dumps(row, default=str))
            continue
        if not isinstance(text, str):
            q.add(file, n, f"missing text: column '{cols.text}'", json.dumps(row, default=str))
            continue
        title = row.get(cols.title) if (with_title and cols.title) else ""
        yield Record(rid.strip(), text, title if isinstance(title, str) else "", file, n)


def _qrels_from_rows(rows, cols: ColumnMap, q: Quarantine, file: str) -> Iterator[Qrel]:
    for n, row in rows:
        qid, pid = _as_str(row.get(cols.qrel_query_id)), _as_str(row.get(cols.qrel_passage_id))
        raw_score = row.get(cols.qrel_score, 1) if cols.qrel_score else 1
        if qid is None or pid is None:
            q.add(file, n, "missing id: qrel without query or passage id", json.dumps(row, default=str))
            continue
        try:
            score = int(raw_score)
        except (TypeError, ValueError):
            q.add(file, n, f"bad relevance score: {raw_score!r}", json.dumps(row, default=str))
            continue
        yield Qrel(qid, pid, score, file, n)


def _hf_rows(spec: HFSource) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except FileNotFoundError as e:
        raise InfirError(f"hf dataset {spec.name!r}: not found ({e})") from None
    except Exception as e:  # datasets raises many types; the user needs the message, not the type
        raise InfirError(f"hf dataset {spec.name!r} (config {spec.config}, split {spec.split}): {e}") from None
    for n, row in enumerate(ds, 1):
        yield n, row


class SourceReader:
    """The three streams of a source (corpus, queries, qrels) for one configured input."""

    def __init__(self, settings: SourceSettings, quarantine: Quarantine):
        self.s = settings
        self.q = quarantine
        self.root = Path(settings.path) if settings.path else None
        if settings.format != "hf":
            if self.root is None:
                raise InfirError(f"source.path is required for format '{settings.format}'")
            if not self.root.is_dir():
                raise InfirError(f"{self.root}: source directory not found")

    def _file(self, name: str | None, default: str, what: str) -> Path:
        return _require(self.root / (name or default), what)

    def input_files(self) -> list[Path]:
        if self.s.format == "hf":
            return []
        return [self.corpus_path(), self.queries_path(), self.qrels_path()]

    def corpus_path(self) -> Path:
        default = {"beir": "corpus.jsonl", "msmarco": "collection.tsv", "jsonl": "corpus.jsonl", "parquet": "corpus.parquet"}
        return self._file(self.s.corpus_file, default[self.s.format], "corpus")

    def queries_path(self) -> Path:
        default = {"beir": "queries.jsonl", "msmarco": "queries.tsv", "jsonl": "queries.jsonl", "parquet": "queries.parquet"}
        return self._file(self.s.queries_file, default[self.s.format], "queries")

    def qrels_path(self) -> Path:
        default = {
            "beir": f"qrels/{self.s.qrels_split}.tsv",
            "msmarco": "qrels.tsv",
            "jsonl": "qrels.tsv",
            "parquet": "qrels.parquet",
        }
        return self._file(self.s.qrels_file, default[self.s.format], "qrels")

    def corpus(self) -> Iterator[Record]:
        return self._records(self.corpus_path if self.s.format != "hf" else None, self.s.hf_corpus, True)

    def queries(self) -> Iterator[Record]:
        return self._records(self.queries_path if self.s.format != "hf" else None, self.s.hf_queries, False)

    def _records(self, path_fn, hf: HFSource | None, with_title: bool) -> Iterator[Record]:
        fmt, cols = self.s.format, self.s.columns
        if fmt == "hf":
            if hf is None:
                raise InfirError("format 'hf' needs source.hf_corpus, source.hf_queries and source.hf_qrels")
            return _records_from_rows(_hf_rows(hf), cols, self.q, with_title, f"hf:{hf.name}")
        path = path_fn()
        if fmt == "msmarco":
            return read_tsv_pairs(path, self.q)
        if fmt == "parquet":
            return read_parquet_records(path, cols, self.q, with_title)
        if fmt == "beir":
            cols = ColumnMap()  # BEIR fixes its field names
        return read_jsonl(path, cols, self.q, with_title)

    def qrels(self) -> Iterator[Qrel]:
        fmt, cols = self.s.format, self.s.columns
        if fmt == "hf":
            if self.s.hf_qrels is None:
                raise InfirError("format 'hf' needs source.hf_qrels")
            return _qrels_from_rows(_hf_rows(self.s.hf_qrels), cols, self.q, f"hf:{self.s.hf_qrels.name}")
        path = self.qrels_path()
        if path.suffix == ".parquet":
            _check_columns(path, _parquet_columns(path), [cols.qrel_query_id, cols.qrel_passage_id])
            return _qrels_from_rows(_table_rows(path), cols, self.q, str(path))
        if path.suffix == ".jsonl":
            return _qrels_from_rows(((n, o) for n, o, _ in _jsonl_objects(path, self.q)), cols, self.q, str(path))
        return read_qrels_text(path, self.q)


def _jsonl_objects(path: Path, q: Quarantine) -> Iterator[tuple[int, dict, str]]:
    """(line number, object, raw line) of each JSON-object line; any other line is quarantined."""
    for n, line in _open_text_lines(path, q):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            q.add(path, n, f"malformed JSON: {e.msg} at column {e.colno}", line)
            continue
        except RecursionError:
            # json's decoder recurses once per nesting level: `[` x 1,500 exhausts the stack.
            q.add(path, n, "malformed JSON: nested too deeply", line)
            continue
        if isinstance(obj, dict):
            yield n, obj, line
        else:
            q.add(path, n, "malformed JSON: not an object", line)
