"""Readers for BEIR-style files (corpus/queries JSONL, qrels TSV or JSONL), one clear error per bad line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import InfirError

__all__ = ["read_jsonl", "read_qrels"]


def iter_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded line by line: a byte that is not UTF-8 is one error
    naming the file, line and column (a text-mode file would raise it from its buffer, lineless)."""
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InfirError(f"{path}:{lineno}: not UTF-8 (invalid byte at column {exc.start + 1})") from None
    except OSError as exc:
        raise InfirError(f"{path}: cannot read: {exc.strerror or exc}") from None


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-blank line; bad JSON is one error naming the line."""
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InfirError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        except RecursionError:  # `[` x 10,000: one error line, not a crash
            raise InfirError(f"{path}:{lineno}: invalid JSON (nested too deeply)") from None


def read_jsonl(path: Path, required: tuple[str, ...] = ("_id",)) -> list[dict[str, Any]]:
    """One object per non-blank line; each must have the ``required`` fields."""
    if not path.is_file():
        raise InfirError(f"{path}: file not found")
    out = []
    for lineno, obj in iter_json_lines(path):
        if not isinstance(obj, dict) or any(k not in obj for k in required):
            need = ", ".join(f"'{k}'" for k in required)
            raise InfirError(f"{path}:{lineno}: expected an object with field(s) {need}")
        out.append(obj)
    return out


def _read_qrels_tsv(path: Path) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    for lineno, rec in enumerate(csv.reader((line for _, line in iter_text_lines(path)), delimiter="\t"), 1):
        if not rec or not "".join(rec).strip():
            continue
        if lineno == 1 and rec[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(rec) < 3:
            raise InfirError(f"{path}:{lineno}: expected query-id<TAB>corpus-id<TAB>score")
        try:
            score = float(rec[2])
        except ValueError as exc:
            raise InfirError(f"{path}:{lineno}: score {rec[2]!r} is not a number") from exc
        qrels.setdefault(rec[0].strip(), {})[rec[1].strip()] = score
    return qrels


def _read_qrels_jsonl(path: Path) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    for lineno, obj in iter_json_lines(path):
        if not isinstance(obj, dict) or not {"query-id", "corpus-id", "score"} <= set(obj):
            raise InfirError(f"{path}:{lineno}: expected an object with query-id, corpus-id and score")
        try:
            score = float(obj["score"])
        except (TypeError, ValueError) as exc:
            raise InfirError(f"{path}:{lineno}: score {obj['score']!r} is not a number") from exc
        qrels.setdefault(str(obj["query-id"]).strip(), {})[str(obj["corpus-id"]).strip()] = score
    return qrels


def read_qrels(path: Path) -> dict[str, dict[str, float]]:
    """qrels as {query-id: {corpus-id: score}} from a ``.tsv`` (header optional) or ``.jsonl`` file."""
    if not path.is_file():
        raise InfirError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        return _read_qrels_jsonl(path)
    return _read_qrels_tsv(path)
