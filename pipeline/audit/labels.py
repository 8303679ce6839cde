"""The labels people give (`labels.jsonl`): append-only, one whole JSON line per answer.

Layout (one of two, both read by `score`):
- `labels.jsonl`: every annotator's answers in one file, the annotator named on each line (what
  the labelling server writes);
- `labels-<annotator>.jsonl`: one file per annotator (e.g. labels made elsewhere and copied in);
  each line's annotator must be the file's.
Any other label-like file in the audit folder is refused with one line (never guessed at).

Each answer is one line written with a single write() of the whole line, then flushed and fsync'd:
a kill leaves at most one cut line at the end, which reading reports and skips (nothing else is
lost), and the next append starts on a fresh line. A later answer for the same (row, annotator)
supersedes the earlier one: that is how going back and answering again works.
"""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from pipeline.audit.questions import QUESTIONS
from pipeline.errors import InfirError
from pipeline.validate import check_safe_name

LABELS = "labels.jsonl"
_PER_ANNOTATOR = re.compile(r"^labels-(.+)\.jsonl$")
QuestionId = Literal[tuple(QUESTIONS)]  # type: ignore[valid-type]


def _iso(value: str) -> str:
    datetime.fromisoformat(value)  # raises ValueError: not ISO 8601
    return value


class Label(BaseModel):
    """One answer line. The questions a person skipped are absent; "unsure" is an answer."""

    model_config = ConfigDict(extra="forbid")
    row_id: str
    annotator: Annotated[str, AfterValidator(check_safe_name)]
    answers: dict[QuestionId, Literal["yes", "no", "unsure"]]
    valid: bool
    note: str = ""
    at: Annotated[str, AfterValidator(_iso)]


def _when(at: str) -> datetime:
    t = datetime.fromisoformat(at)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # a time without a zone is read as UTC


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc']) or 'line'}: {err['msg']}"


def parse_label(obj: dict, where: str) -> Label:
    try:
        return Label.model_validate(obj)
    except ValidationError as e:
        raise InfirError(f"{where}: {_first_error(e)}") from None


class LabelWriter:
    """Appends one annotator's answers to `labels.jsonl` (threads of the server share one writer)."""

    def __init__(self, audit_dir: Path):
        self.path = Path(audit_dir) / LABELS
        self._lock = threading.Lock()

    def append(self, label: Label) -> None:
        line = (json.dumps(label.model_dump(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                    line = b"\n" + line  # a cut line from a kill: close it, so this answer stays whole
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def label_files(audit_dir: Path) -> list[tuple[Path, str | None]]:
    """The label files of an audit with the annotator a file is for (None: named on each line);
    an unknown layout is refused."""
    out: list[tuple[Path, str | None]] = []
    for p in sorted(Path(audit_dir).iterdir()):
        if p.name.startswith("."):
            continue  # an editor's swap file, a temp file: no one's labels
        if p.name == LABELS:
            out.insert(0, (p, None))
        elif m := _PER_ANNOTATOR.match(p.name):
            try:
                out.append((p, check_safe_name(m.group(1))))
            except ValueError as e:
                raise InfirError(f"{p}: unknown label layout: {e}") from None
        elif p.name.startswith("label") or p.suffix == ".jsonl":
            raise InfirError(f"{p}: unknown label layout: labels go in {LABELS} (the annotator on each line) "
                             "or labels-<annotator>.jsonl (one file per annotator)")
    return out


def read_labels(audit_dir: Path, row_ids: set[str]) -> tuple[dict[tuple[str, str], Label], list[str]]:
    """The latest answer per (row id, annotator) and one note per line skipped (a cut line, a row id
    not in the sample, an exact repeat). A line that is whole JSON but not a label is an error
    naming its file, line and key."""
    latest: dict[tuple[str, str], tuple[tuple, Label]] = {}
    notes: list[str] = []
    seq = 0
    for path, owner in label_files(audit_dir):
        data = path.read_bytes()
        lines = data.split(b"\n")
        seen: dict[str, int] = {}
        for no, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            where = f"{path}: line {no}"
            try:
                obj = json.loads(raw)
            except ValueError:
                last = no == len(lines)
                notes.append(f"{where}: {'the last line is cut short' if last else 'not a whole line'} "
                             "(a write interrupted by a kill?); skipped, the other lines are kept")
                continue
            if not isinstance(obj, dict):
                raise InfirError(f"{where}: expected a JSON object (one label per line)")
            label = parse_label(obj, where)
            if owner is not None and label.annotator != owner:
                raise InfirError(f"{where}: annotator {label.annotator!r} in {path.name}, which holds the labels of {owner!r}")
            key = json.dumps(label.model_dump(), sort_keys=True)
            if key in seen:
                notes.append(f"{where}: repeats line {seen[key]} exactly; counted once")
                continue
            seen[key] = no
            if label.row_id not in row_ids:
                notes.append(f"{where}: row id {label.row_id!r} is not in the sample; skipped")
                continue
            seq += 1
            order = (_when(label.at), seq)  # the later answer wins; file order breaks a tie
            k = (label.row_id, label.annotator)
            if k not in latest or order >= latest[k][0]:
                latest[k] = (order, label)
    return {k: v[1] for k, v in latest.items()}, notes
