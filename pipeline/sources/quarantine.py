"""Rows that cannot be used go here with a reason, never silently away."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)
RAW_LIMIT = 500


class Quarantine:
    def __init__(self, root: Path | None = None):
        # Paths are stored relative to the input root: no absolute local paths in outputs.
        self.root = Path(root) if root else None
        self.rows: list[dict] = []
        self.counts: Counter[str] = Counter()

    def _rel(self, file: str | Path) -> str:
        p = Path(file)
        if self.root:
            try:
                return str(p.resolve().relative_to(self.root.resolve()))
            except ValueError:
                pass
        return p.name

    def add(self, file: str | Path, line: int, reason: str, raw: str = "") -> None:
        kind = reason.split(":", 1)[0]
        self.counts[kind] += 1
        self.rows.append(
            {"file": self._rel(file), "line": int(line), "reason": reason, "raw": raw[:RAW_LIMIT]}
        )

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=SCHEMA)
