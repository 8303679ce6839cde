"""Streaming readers for BEIR jsonl, MS MARCO tsv, jsonl/parquet with a column map, and HF datasets.

Every reader yields records with the file and line they came from; a line that cannot be read
goes to the quarantine with its reason. A missing file or a missing column is fatal and named.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sources.hf import hf_rows
from pipeline.sources.settings import HFSource, QrelColumns, RecordColumns, SourceSettings
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


def require_regular(path: Path, key: str) -> Path:
    """`path` unless it is a FIFO, socket or device (a folder is left to the reader: a Parquet
    export may be one): reading one would wait for a writer that never comes, or never end."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise InfirError(f"{path}: not a regular file ({key}); a FIFO, socket or device cannot be a source file")
    return path


def _as_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None


def _key(part: str, field: str) -> str:
    """The config key that names a column, for messages: source.columns.queries.id."""
    return f"source.columns.{part}.{field}"


def read_jsonl(path: Path, cols: RecordColumns, q: Quarantine, with_title: bool, part: str) -> Iterator[Record]:
    yield from _records_from_rows(((n, o) for n, o, _ in _jsonl_objects(path, q)), cols, q, with_title, str(path), part, "field")


def read_tsv_pairs(path: Path, q: Quarantine) -> Iterator[Record]:
    """MS MARCO `id<TAB>text` files (collection.tsv, queries.dev.tsv, queries.train.tsv)."""
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


def _check_columns(path: Path, present: list[str], needed: dict[str, str | None]) -> None:
    """`needed`: config key -> column name. A missing one is fatal, naming the key to set."""
    missing = [f"{col} ({key})" for key, col in needed.items() if col and col not in present]
    if missing:
        raise InfirError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(present)})")


def _parquet_columns(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: not a readable Parquet file ({e})") from None


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or every `*.parquet` under a folder (a sharded export), in name order."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise InfirError(f"{path}: folder holds no .parquet files")
        return files
    return [path]


def read_parquet_records(path: Path, cols: RecordColumns, q: Quarantine, with_title: bool, part: str) -> Iterator[Record]:
    for f in parquet_files(path):
        _check_columns(f, _parquet_columns(f), {_key(part, "id"): cols.id, _key(part, "text"): cols.text})
        yield from _records_from_rows(_table_rows(f), cols, q, with_title, str(f), part)


def _records_from_rows(
    rows, cols: RecordColumns, q: Quarantine, with_title: bool, file: str, part: str, what: str = "column"
) -> Iterator[Record]:
    for n, row in rows:
        rid, text = _as_str(row.get(cols.id)), row.get(cols.text)
        if rid is None or not rid.strip():
            q.add(file, n, f"missing id: {what} '{cols.id}' ({_key(part, 'id')})", json.dumps(row, default=str))
            continue
        if not isinstance(text, str):
            q.add(file, n, f"missing text: {what} '{cols.text}' ({_key(part, 'text')})", json.dumps(row, default=str))
            continue
        title = row.get(cols.title) if (with_title and cols.title) else ""
        yield Record(rid.strip(), text, title if isinstance(title, str) else "", file, n)


def _qrels_from_rows(rows, cols: QrelColumns, q: Quarantine, file: str) -> Iterator[Qrel]:
    for n, row in rows:
        qid, pid = _as_str(row.get(cols.query_id)), _as_str(row.get(cols.passage_id))
        raw_score = row.get(cols.score, 1) if cols.score else 1
        if qid is None or pid is None:
            q.add(file, n, f"missing id: qrel without '{cols.query_id}' or '{cols.passage_id}' "
                  "(source.columns.qrels.query_id / passage_id)", json.dumps(row, default=str))
            continue
        try:
            score = int(raw_score)
        except (TypeError, ValueError):
            q.add(file, n, f"bad relevance score: {raw_score!r}", json.dumps(row, default=str))
            continue
        yield Qrel(qid, pid, score, file, n)


_DEFAULTS = {
    "corpus": {"beir": ["corpus.jsonl"], "msmarco": ["collection.tsv"], "jsonl": ["corpus.jsonl"],
               "parquet": ["corpus.parquet", "corpus"]},
    "queries": {"beir": ["queries.jsonl"], "jsonl": ["queries.jsonl"], "parquet": ["queries.parquet", "queries"]},
    "qrels": {"jsonl": ["qrels.tsv", "qrels.jsonl"], "parquet": ["qrels.parquet", "qrels"]},
}
# MS MARCO's official names (queries.dev.tsv, qrels.dev.tsv, ...), then the generic ones.
_MSMARCO_SPLITS = ("dev", "train")


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
                hint = " (`infir init DIR` writes a config for the bundled sample)" if str(settings.path) == "data/sample" else ""
                raise InfirError(f"{self.root}: source directory not found (source.path){hint}")

    def _candidates(self, part: str) -> list[str]:
        fmt, split = self.s.format, self.s.qrels_split
        if fmt == "beir" and part == "qrels":
            return [f"qrels/{split or 'test'}.tsv"]
        if fmt == "msmarco" and part != "corpus":
            splits = [split] if split else list(_MSMARCO_SPLITS)
            return [f"{part}.{sp}.tsv" for sp in splits] + ([f"{part}.tsv"] if not split else [])
        return _DEFAULTS[part][fmt]

    def _file(self, part: str) -> Path:
        return require_regular(self._find(part), f"source.{part}_file")

    def _find(self, part: str) -> Path:
        key = f"source.{part}_file"
        name = getattr(self.s, f"{part}_file")
        if name:
            path = self.root / name
            if not path.exists():
                raise InfirError(f"{path}: {part} file not found ({key})")
            return path
        names = self._candidates(part)
        found = [self.root / n for n in names if (self.root / n).exists()]
        if not found and len(names) == 1:
            raise InfirError(f"{self.root / names[0]}: {part} file not found; set {key} if it has another name")
        if not found:
            raise InfirError(f"{self.root}: no {part} file (looked for {', '.join(names)}); set {key} to its name")
        if self.s.format == "msmarco" and part != "corpus" and not self.s.qrels_split and len(found) > 1:
            splits = [p.name.split(".")[1] for p in found if p.name.count(".") == 2]
            if len(splits) > 1:
                raise InfirError(
                    f"{self.root}: {', '.join(p.name for p in found)} all found; "
                    f"set source.qrels_split to one of {', '.join(splits)}"
                )
        return found[0]

    def input_files(self) -> list[Path]:
        if self.s.format == "hf":
            return []
        files = []
        for p in (self.corpus_path(), self.queries_path(), self.qrels_path()):
            files += parquet_files(p) if p.is_dir() else [p]
        return files

    def corpus_path(self) -> Path:
        return self._file("corpus")

    def queries_path(self) -> Path:
        return self._file("queries")

    def qrels_path(self) -> Path:
        return self._file("qrels")

    def corpus(self) -> Iterator[Record]:
        return self._records("corpus", self.s.hf_corpus, True)

    def queries(self) -> Iterator[Record]:
        return self._records("queries", self.s.hf_queries, False)

    def _records(self, part: str, hf: HFSource | None, with_title: bool) -> Iterator[Record]:
        fmt = self.s.format
        cols: RecordColumns = getattr(self.s.columns, part)
        if fmt == "hf":
            if hf is None:
                raise InfirError(f"format 'hf' needs source.hf_{part} (and source.hf_corpus, hf_queries, hf_qrels)")
            return _records_from_rows(hf_rows(hf, f"source.hf_{part}"), cols, self.q, with_title, f"hf:{hf.name}", part)
        path = self._file(part)
        if fmt == "msmarco":
            return read_tsv_pairs(path, self.q)
        if fmt == "parquet":
            return read_parquet_records(path, cols, self.q, with_title, part)
        if fmt == "beir":
            cols = RecordColumns()  # BEIR fixes its field names
        return read_jsonl(path, cols, self.q, with_title, part)

    def qrels(self) -> Iterator[Qrel]:
        fmt, cols = self.s.format, self.s.columns.qrels
        if fmt == "hf":
            if self.s.hf_qrels is None:
                raise InfirError("format 'hf' needs source.hf_qrels")
            return _qrels_from_rows(hf_rows(self.s.hf_qrels, "source.hf_qrels"), cols, self.q, f"hf:{self.s.hf_qrels.name}")
        path = self.qrels_path()
        if path.is_dir() or path.suffix == ".parquet":
            return self._parquet_qrels(path, cols)
        if path.suffix == ".jsonl":
            return _qrels_from_rows(((n, o) for n, o, _ in _jsonl_objects(path, self.q)), cols, self.q, str(path))
        return read_qrels_text(path, self.q)

    def _parquet_qrels(self, path: Path, cols: QrelColumns) -> Iterator[Qrel]:
        for f in parquet_files(path):
            _check_columns(f, _parquet_columns(f), {"source.columns.qrels.query_id": cols.query_id,
                                                    "source.columns.qrels.passage_id": cols.passage_id})
            yield from _qrels_from_rows(_table_rows(f), cols, self.q, str(f))


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(line: str, obj) -> str | None:
    """The first unpaired surrogate (`"\\ud800"`) a JSON line decodes to, as `\\uXXXX`, else None.
    json accepts the escape, but no UTF-8 writer (Parquet, the LLM request) can encode it: one
    such line would fail the whole stage. Paired escapes (an emoji) decode to one valid character.
    Only a line that holds such an escape at all is re-encoded (the rare case)."""
    if not _SURROGATE_ESCAPE.search(line):
        return None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return f"\\u{ord(e.object[e.start]):04x}"
    except RecursionError:
        return None  # nested deeper than the encoder goes: the line is left as it was read
    return None


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
        surrogate = _lone_surrogate(line, obj)
        if surrogate:
            q.add(path, n, f"not UTF-8: a JSON string holds the lone surrogate {surrogate}", line)
            continue
        if isinstance(obj, dict):
            yield n, obj, line
        else:
            q.add(path, n, "malformed JSON: not an object", line)
