"""Persistent response cache: one SQLite file (WAL), one row per request.

- key: "v1:" + sha256 of the canonical JSON of the request body (see `client.cache_key`).
- response: the backend's raw chat.completion dict, as JSON. Parsing happens after lookup and is
  versioned apart (`client.PARSER_VERSION`), so a parser fix costs no calls.
- Every `put` commits at once (WAL + synchronous=NORMAL: no fsync per commit, durable against a
  killed process), so a kill -9 loses at most the calls in flight.
- One connection, guarded by a lock, does all the writing (the single writer). Hit counters are
  bumped in memory and flushed with the next write, on `stats()` and on `close()`.
- The file is created with mode 0600 before SQLite opens it (SQLite gives its -wal/-shm files the
  same mode). Nothing of the request's headers (the API key) is ever stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import InfirError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Cache:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pending_hits: dict[str, int] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create the file ourselves so that its mode is 0600 from the first byte. Only when it is
            # missing: closing an fd of an existing database drops every POSIX lock this process
            # holds on it (another Cache's), and another process would then delete its WAL under it.
            if not self.path.exists():
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(fd)
            self._conn = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except (OSError, sqlite3.Error) as e:
            raise InfirError(f"LLM cache {self.path}: cannot open: {e}") from None

    # -- reads -------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for `key`, or None. Counts a hit."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            self._pending_hits[key] = self._pending_hits.get(key, 0) + 1
        return json.loads(row[0])

    def contains(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def contains_many(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                found.update(k for (k,) in self._conn.execute(q, chunk))
        return found

    def peek_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{key: response} of the keys present. Counts no hit: for planning (the batch runner), not use."""
        keys = list(keys)
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, response FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                found.update((k, json.loads(r)) for k, r in self._conn.execute(q, chunk))
        return found

    def hits(self, key: str) -> int:
        """How many times `key` was served from the cache (all runs)."""
        with self._lock:
            self._flush_hits()
            row = self._conn.execute("SELECT hits FROM responses WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    # -- writes ------------------------------------------------------------------------------
    def put(self, key: str, response: dict[str, Any], model: str | None = None) -> None:
        self.put_many([(key, response, model)])

    def put_many(self, items: Iterable[tuple[str, dict[str, Any], str | None]]) -> int:
        """Store (key, response, model) rows in ONE transaction (a downloaded batch result file:
        thousands of rows, one commit). Returns the number of rows written."""
        now = time.time()
        rows = [_row(key, response, model, now) for key, response, model in items]
        if not rows:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO responses(key, model, response, prompt_tokens, completion_tokens,"
                    " created_at, hits) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    rows,
                )
                self._write_hits()
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return len(rows)

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (SQLITE_FULL): a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _write_hits(self) -> None:
        if self._pending_hits:
            self._conn.executemany(
                "UPDATE responses SET hits = hits + ? WHERE key = ?",
                [(n, k) for k, n in self._pending_hits.items()],
            )
            self._pending_hits.clear()

    def _flush_hits(self) -> None:
        if self._pending_hits:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_hits()
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def flush(self) -> None:
        with self._lock:
            self._flush_hits()

    # -- info --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._flush_hits()
            entries, hits, pt, ct = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(hits),0), COALESCE(SUM(prompt_tokens),0),"
                " COALESCE(SUM(completion_tokens),0) FROM responses"
            ).fetchone()
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return {
            "entries": int(entries),
            "hits": int(hits),
            "prompt_tokens": int(pt),
            "completion_tokens": int(ct),
            "size_bytes": size,
            "path": str(self.path),
        }

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._flush_hits()
            finally:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row(key: str, response: dict[str, Any], model: str | None, now: float) -> tuple[Any, ...]:
    usage = response.get("usage") or {}
    return (
        key,
        model or response.get("model"),
        json.dumps(response, ensure_ascii=False, separators=(",", ":")),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        now,
    )
