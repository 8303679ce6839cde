"""Persistent response cache: one SQLite file (WAL), one row per request.

- key: "v1:" + sha256 of the canonical JSON of the request body (see `client.cache_key`).
- response: the backend's raw chat.completion dict, as JSON. Parsing happens after lookup and is
  versioned apart (`client.PARSER_VERSION`), so a parser fix costs no calls.
- Every `put` commits at once (WAL + synchronous=NORMAL: no fsync per commit, durable against a
  killed process), so a kill -9 loses at most the calls in flight.
- One connection, guarded by a lock, does all the writing (the single writer). Hit counters are
  bumped in memory and flushed with the next write, on `stats()` and on `close()`.
- In-flight claims (table `claims`: key, owner, expires_at) keep two processes sharing the file from
  paying twice for one request: a process claims a key before sending it; another that finds a live
  claim waits for the answer instead (`claim_or_wait`). The answer's `put` drops the claim; a claim
  whose owner died (its pid is gone on this host, or it expired) is taken over, and so is one with
  no news from its owner (the row unchanged) for the waiter's TTL by the waiter's own clock, whatever
  expiry the row states: a row with a far-future expiry cannot block a run.
- Only usable answers are kept (`completion.check_completion`): `put` refuses the others, and a
  stored row that does not read back as a chat.completion (not JSON, `[1,2,3]`, `{"choices":"x"}`,
  content a number) is dropped when read (`dropped` counts them), so the request is asked again.
- The file is created with mode 0600 before SQLite opens it (SQLite gives its -wal/-shm files the
  same mode). Nothing of the request's headers (the API key) is ever stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import InfirError
from pipeline.llm.completion import InvalidAnswer, check_completion, decode_completion

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
"""
# Waiting for another process's answer: first poll soon (answers often take well under a second),
# then back off to this interval.
CLAIM_POLL_MAX_S = 0.5


class Cache:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pending_hits: dict[str, int] = {}
        # Who holds a claim: host and pid (so that a process on this host can see that the owner
        # died) plus a random part (a reused pid is not the old owner).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claim_ttl_s = 0.0
        self._claims_refreshed = 0.0
        # key -> ((owner, expires_at) as last seen, when first seen so: time.monotonic()): how long
        # another process's claim has gone without news, by this process's clock.
        self._claims_seen: dict[str, tuple[tuple[Any, Any], float]] = {}
        self.dropped = 0  # stored rows that were not a usable chat.completion, dropped when read
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
        """The stored response for `key`, or None. Counts a hit. A row that is not a usable
        chat.completion is dropped (None: the request is asked again)."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            response = self._checked_row(key, row[0])
            if response is not None:
                self._pending_hits[key] = self._pending_hits.get(key, 0) + 1
        return response

    def _checked_row(self, key: str, text: Any) -> dict[str, Any] | None:
        """A stored row decoded and checked (under the lock); one that cannot be used is deleted."""
        try:
            return decode_completion(text)
        except InvalidAnswer as e:
            self.dropped += 1
            log.warning("LLM cache %s: dropped the stored answer of %s (%s); it is asked again", self.path, key, e)
            # Autocommit, or part of the caller's transaction (`_try_claim`). Only this row: another
            # process may have stored a good answer meanwhile. Left in place, it is dropped next time.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("DELETE FROM responses WHERE key = ? AND response IS ?", (key, text))
            return None

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
                for k, r in self._conn.execute(q, chunk).fetchall():
                    response = self._checked_row(k, r)
                    if response is not None:
                        found[k] = response
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
        rows = []
        for key, response, model in items:
            try:
                rows.append(_row(key, check_completion(response), model, now))
            except InvalidAnswer as e:  # callers check first; this is the last guard of the file
                log.warning("LLM cache %s: not storing the answer of %s (%s)", self.path, key, e)
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
                self._conn.executemany("DELETE FROM claims WHERE key = ?", [(r[0],) for r in rows])
                self._refresh_claims(now)
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

    # -- in-flight claims (two processes, one request) ------------------------------------------
    async def claim_or_wait(self, key: str, ttl_s: float) -> dict[str, Any] | None:
        """The answer to `key` if another process sent it (awaited while its claim is live; counts
        a hit), or None once this process holds the claim and must send the request itself: then
        `put` (the answer) or `release` (a failure) ends the claim. `ttl_s`: how long a claim lives
        without news from its owner (the owner's writes renew all its claims)."""
        delay = 0.02
        while True:
            with self._lock:
                answer, claimed = self._try_claim(key, ttl_s)
            if answer is not None:
                return answer
            if claimed:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, CLAIM_POLL_MAX_S)

    def _try_claim(self, key: str, ttl_s: float) -> tuple[dict[str, Any] | None, bool]:
        now = time.time()
        self._conn.execute("BEGIN IMMEDIATE")  # check-and-claim as one step across processes
        try:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
            answer = self._checked_row(key, row[0]) if row is not None else None
            if answer is not None:
                self._conn.execute("COMMIT")
                self._pending_hits[key] = self._pending_hits.get(key, 0) + 1
                self._claims_seen.pop(key, None)
                return answer, False
            held = self._conn.execute("SELECT owner, expires_at FROM claims WHERE key = ?", (key,)).fetchone()
            if held is not None and self._held_by_another(key, held[0], held[1], ttl_s, now):
                self._conn.execute("COMMIT")
                return None, False
            self._claims_seen.pop(key, None)
            self._claim_ttl_s = max(self._claim_ttl_s, ttl_s)
            self._conn.execute(
                "INSERT OR REPLACE INTO claims(key, owner, expires_at) VALUES (?, ?, ?)", (key, self.owner, now + ttl_s)
            )
            self._refresh_claims(now)
            self._conn.execute("COMMIT")
            return None, True
        except BaseException:
            self._rollback()
            raise

    def _held_by_another(self, key: str, owner: Any, expires_at: Any, ttl_s: float, now: float) -> bool:
        """Whether another process's claim row still holds, by the documented rule (docs/reliability.md,
        "Shared cache, one payment") rather than by what the row says: it does not once its owner is
        gone, its stated expiry has passed (or is not a number), or it has gone `ttl_s` without news
        (the row unchanged: the owner's writes renew its claims) by this process's clock. So a forged
        or corrupt row with a far-future expiry is taken over after `ttl_s`, not never."""
        owner = owner if isinstance(owner, str) else str(owner)
        if owner == self.owner or not _alive(owner):
            return False
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not expires_at > now:
            return False  # expired, or not a time at all (text, NULL; NaN compares false)
        mono = time.monotonic()
        seen = self._claims_seen.get(key)
        if seen is None or seen[0] != (owner, expires_at):
            self._claims_seen[key] = ((owner, expires_at), mono)  # news (or first sight): the clock starts
            return True
        return mono - seen[1] < ttl_s

    def _refresh_claims(self, now: float) -> None:
        """Renew this process's claims (inside a write transaction), at most every quarter TTL: a
        claim taken long before its request leaves the queue must not expire while its owner lives."""
        if self._claim_ttl_s and now - self._claims_refreshed > self._claim_ttl_s / 4:
            self._conn.execute("UPDATE claims SET expires_at = ? WHERE owner = ?", (now + self._claim_ttl_s, self.owner))
            self._claims_refreshed = now

    def release(self, key: str) -> None:
        """Drop this process's claim on `key` (its request failed: another process may try)."""
        with self._lock, contextlib.suppress(sqlite3.Error):  # left behind, it expires
            if self._conn is not None:
                self._conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

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
                with contextlib.suppress(sqlite3.Error):  # left behind, they expire (or die with the pid)
                    self._conn.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
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


def _alive(owner: str) -> bool:
    """False when `owner` ("host:pid:nonce") ran on this host and its process is gone: its claims
    are taken over at once instead of after their expiry. An owner on another host counts as alive."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True
