"""Stable, content-derived identifiers and fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.fileio import canonical_json, sha256_file  # noqa: F401  (re-exported)

ID_VERSION = "r1"


def content_id(*parts: str, length: int = 16) -> str:
    """A row id that depends only on content, so resume never depends on position."""
    h = hashlib.sha256(ID_VERSION.encode())
    for p in parts:
        h.update(b"\x1f")
        h.update(p.encode("utf-8"))
    return h.hexdigest()[:length]


def file_fingerprint(paths: list[Path]) -> str:
    """Fingerprint of input files by name, size and mtime (cheap for multi-GB collections)."""
    items = []
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        items.append([p.name, st.st_size, int(st.st_mtime)])
    return hashlib.sha256(canonical_json(items).encode()).hexdigest()[:16]


def identity_hash(*parts) -> str:
    """A stable hash of what a stage depends on: config sections (pydantic models) and plain values."""

    def plain(x):
        return json.loads(x.model_dump_json()) if hasattr(x, "model_dump_json") else x

    payload = canonical_json([plain(p) for p in parts])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
