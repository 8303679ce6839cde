"""Spend and the cap on it, kept where every process of a run sees them: a small SQLite ledger.

The client reserves a request's expected cost before it sends it and settles the reservation with
the real cost when the answer arrives (or releases it when the attempt fails). A request is not
sent when spent + reserved + its own reservation would pass the cap, so the cap holds across
stages, processes, resumes and reruns; the spend is recorded as each answer arrives, so a kill
loses at most the answers in flight. The worst case above the cap is what the requests in flight
cost beyond their reservations (bounded by `llm.concurrency` x the cost of an answer at its
`max_completion_tokens`); see README, "A real run".

Reservations of a process that died (kill -9) are dropped the next time anyone reserves: nothing
of theirs will ever be settled.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from pipeline.errors import InfirError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (id INTEGER PRIMARY KEY, at REAL NOT NULL, label TEXT NOT NULL, usd REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reserved (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, usd REAL NOT NULL, at REAL NOT NULL);
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SpendLedger:
    """Durable spend with reservations against an optional cap (USD)."""

    def __init__(self, path: Path, cap: float | None = None, label: str = ""):
        self.path = Path(path)
        self.cap = cap
        self.label = label
        self._lock = threading.Lock()  # the client's event loop and its callers share one connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise InfirError(f"{self.path}: cannot open the spend ledger: {e}") from None

    # -- reading -------------------------------------------------------------------------------
    def spent(self, label: str | None = None) -> float:
        with self._lock:
            q, args = "SELECT COALESCE(SUM(usd), 0) FROM spend", ()
            if label is not None:
                q, args = q + " WHERE label = ?", (label,)
            return float(self._db.execute(q, args).fetchone()[0])

    def by_label(self) -> dict[str, float]:
        with self._lock:
            rows = self._db.execute("SELECT label, SUM(usd) FROM spend GROUP BY label ORDER BY MIN(id)").fetchall()
        return {label: float(usd) for label, usd in rows}

    # -- reserving and settling ------------------------------------------------------------------
    def reserve(self, usd: float) -> int | None:
        """A reservation id, or None when the request would take the run past its cap."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._drop_dead()
                if self.cap is not None:
                    spent, held = self._db.execute(
                        "SELECT (SELECT COALESCE(SUM(usd), 0) FROM spend), (SELECT COALESCE(SUM(usd), 0) FROM reserved)"
                    ).fetchone()
                    if spent + held + usd > self.cap:
                        self._db.execute("ROLLBACK")
                        return None
                cur = self._db.execute("INSERT INTO reserved (pid, usd, at) VALUES (?, ?, ?)", (os.getpid(), usd, time.time()))
                self._db.execute("COMMIT")
                return int(cur.lastrowid)
            except sqlite3.Error as e:
                self._rollback()
                raise InfirError(f"{self.path}: spend ledger: {e}") from None

    def settle(self, reservation: int | None, usd: float, label: str | None = None) -> None:
        """Record what an answer cost and drop its reservation, in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if reservation is not None:
                    self._db.execute("DELETE FROM reserved WHERE id = ?", (reservation,))
                if usd:
                    self._db.execute("INSERT INTO spend (at, label, usd) VALUES (?, ?, ?)",
                                     (time.time(), label if label is not None else self.label, usd))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise InfirError(f"{self.path}: spend ledger: {e}") from None

    def release(self, reservation: int | None) -> None:
        if reservation is not None:
            self.settle(reservation, 0.0)

    def would_exceed(self) -> bool:
        """The cap is reached: nothing more can be reserved."""
        return self.cap is not None and self.spent() >= self.cap

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _drop_dead(self) -> None:
        pids = [p for (p,) in self._db.execute("SELECT DISTINCT pid FROM reserved").fetchall()]
        for pid in pids:
            if pid != os.getpid() and not _alive(pid):
                self._db.execute("DELETE FROM reserved WHERE pid = ?", (pid,))

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
