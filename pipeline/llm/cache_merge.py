"""Many processes, one cache: each worker writes its new responses to its OWN SQLite file, reads the
main cache and its siblings', and the driver merges the worker files into the main cache.

Why not every worker writing the main file: SQLite's WAL needs shared memory between writers, which
a network filesystem (the usual shared storage of a cluster) does not give; one writer per file
keeps each file valid wherever it lives. Layout, beside the main cache `<cache>`:

    <cache>.workers/<group>--<host>-<pid>.sqlite3   one per worker process and group (run + stage)

A worker that dies leaves its file with every response it committed (each `put` commits), so a
retried task on another worker finds them through `WorkerCache`'s sibling reads, and the driver
merges them at the end of the stage or at the start of the resume: no paid response is lost.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from pipeline.llm.cache import Cache


def workers_dir(main: Path | str) -> Path:
    main = Path(main)
    return main.with_name(main.name + ".workers")


def worker_cache_path(main: Path | str, group: str) -> Path:
    """This process's own cache file for `group` (e.g. "<run>-<stage>")."""
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())
    return workers_dir(main) / f"{_safe(group)}--{host}-{os.getpid()}.sqlite3"


def _safe(group: str) -> str:
    # Paths built from the run name stay inside the workers folder.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in group).lstrip(".") or "run"


def group_files(main: Path | str, group: str) -> list[Path]:
    return sorted(workers_dir(main).glob(f"{_safe(group)}--*.sqlite3"))


class _Reader:
    """A read-only view of another process's cache file (no hit counting, no writes)."""

    def __init__(self, path: Path):
        self.path = path
        # A plain connection, used only to SELECT: a read-only one cannot open a WAL file whose
        # writer was killed (its -shm must be rebuilt).
        self.conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=30000")

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, response FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                found.update((k, json.loads(r)) for k, r in self.conn.execute(q, chunk))
        except sqlite3.Error:
            return found  # a file still being created, or gone: nothing to read from it
        return found

    def close(self) -> None:
        self.conn.close()


class WorkerCache(Cache):
    """A worker's cache: writes (and hit counts) go to its own file; a lookup that misses there reads
    the main cache, then the other worker files of the same group (a worker that died mid-chunk)."""

    def __init__(self, main: Path | str, group: str):
        self.main_path = Path(main)
        self.group = group
        super().__init__(worker_cache_path(main, group))
        self._readers: dict[Path, _Reader] = {}

    def _others(self) -> list[_Reader]:
        paths = [self.main_path] if self.main_path.is_file() else []
        paths += [p for p in group_files(self.main_path, self.group) if p != self.path]
        for p in paths:
            if p not in self._readers:
                try:
                    self._readers[p] = _Reader(p)
                except sqlite3.Error:
                    continue
        return [self._readers[p] for p in paths if p in self._readers]

    def _elsewhere(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for reader in self._others():
            missing = [k for k in keys if k not in found]
            if not missing:
                break
            found.update(reader.get_many(missing))
        return found

    def get(self, key: str) -> dict[str, Any] | None:
        own = super().get(key)
        if own is not None:
            return own
        return self._elsewhere([key]).get(key)

    def contains_many(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        own = super().contains_many(keys)
        return own | set(self._elsewhere([k for k in keys if k not in own]))

    def contains(self, key: str) -> bool:
        return bool(self.contains_many([key]))

    def peek_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        own = super().peek_many(keys)
        return {**self._elsewhere([k for k in keys if k not in own]), **own}

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
        super().close()


def merge_worker_caches(main: Path | str, group: str) -> int:
    """Copy every response of the group's worker files that the main cache lacks into it (one
    transaction per file), then delete the worker file. Returns the responses added. Call it when
    no worker of the group runs (the driver holds the stage lock: at stage end, and at the start
    of a resume)."""
    files = group_files(main, group)
    if not files:
        return 0
    if not Path(main).is_file():
        Cache(main).close()  # its schema and mode; no connection of this process to disturb yet
    added = 0
    # A plain SQLite connection, not `Cache(main)`: Cache opens and closes an fd of the file to set
    # its mode, and closing any fd of a file drops every POSIX lock this process holds on it,
    # including those of the run's client already connected to it (SQLite's documented pitfall).
    conn = sqlite3.connect(str(main), timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        for path in files:
            added += _merge_one(conn, path)
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
    finally:
        conn.close()
    return added


def _merge_one(conn: sqlite3.Connection, path: Path) -> int:
    try:
        reader = _Reader(path)
    except sqlite3.Error:
        return 0
    try:
        rows = reader.conn.execute(
            "SELECT key, model, response, prompt_tokens, completion_tokens, created_at FROM responses"
        ).fetchall()
    except sqlite3.Error:
        rows = []  # an empty file (the worker died before creating its table)
    finally:
        reader.close()
    if not rows:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO responses(key, model, response, prompt_tokens, completion_tokens, created_at, hits)"
            " VALUES (?, ?, ?, ?, ?, ?, 0)", rows,
        )
        added = conn.total_changes - before
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return added
