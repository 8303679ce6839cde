"""Evaluation topic files for decontamination: TREC topic format or `qid<TAB>query`, gzip accepted."""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import InfirError
from pipeline.sources.text import normalize

_TAG = re.compile(r"<(num|title|desc|narr)>", re.I)
_LABEL = re.compile(r"^\s*(number|description|narrative)\s*:", re.I)


@dataclass(frozen=True, slots=True)
class Topic:
    file: str
    topic_id: str
    field: str  # query | title | desc
    text: str


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InfirError(f"{path}: evaluation topic file not found")
    if not path.is_file():  # a FIFO or a device would block the read, or never end
        raise InfirError(f"{path}: not a regular file (source.decontaminate)")
    try:
        data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        # EOFError: a truncated gzip; unhandled, the CLI framework would take it for Ctrl-D ("Abort").
        raise InfirError(f"{path}: cannot read: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Old TREC files are Latin-1; topic text is still usable.
        return data.decode("latin-1")


def _trec_topics(path: Path, text: str) -> Iterator[Topic]:
    for block in re.split(r"</top>", text, flags=re.I):
        if "<top>" not in block.lower():
            continue
        fields: dict[str, str] = {}
        parts = _TAG.split(block)
        # parts = [pre, tag, body, tag, body, ...]
        for tag, body in zip(parts[1::2], parts[2::2]):
            fields[tag.lower()] = normalize(_LABEL.sub("", body, count=1))
        tid = fields.get("num", "?")
        for name in ("title", "desc"):
            if fields.get(name):
                yield Topic(path.name, tid, name, fields[name])


def read_topics(path: Path) -> list[Topic]:
    path = Path(path)
    text = _read_text(path)
    if "<top>" in text.lower():
        return list(_trec_topics(path, text))
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise InfirError(f"{path}:{n}: expected `qid<TAB>query` or TREC topic format")
        out.append(Topic(path.name, parts[0].strip(), "query", normalize(parts[1])))
    return out
