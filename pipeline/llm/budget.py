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

Rows are checked whenever they are read (opening the ledger, every reservation, `spent`): an
amount that is not a non-negative finite number (a forged `-999.98`, `Infinity`, text, NULL) is
refused with one line naming the file and the row, never summed: a negative row would otherwise
lift the cap by its amount. The run stops until the row is removed or the file restored.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from pipeline.errors import InfirError
from pipeline.fileio import pid_alive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (id INTEGER PRIMARY KEY, at REAL NOT NULL, label TEXT NOT NULL, usd REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reserved (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, usd REAL NOT NULL, at REAL NOT NULL);
"""


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
        try:  # a damaged ledger stops the stage before it sends anything
            self._read(self._sums, None)
        except InfirError:
            self._db.close()
            raise

    # -- reading -------------------------------------------------------------------------------
    def spent(self, label: str | None = None) -> float:
        with self._lock:
            return self._read(self._sums, label)[0]

    def by_label(self) -> dict[str, float]:
        with self._lock:
            self._read(self._sums, None)  # every row checked first
            rows = self._read(lambda: self._db.execute(
                "SELECT label, SUM(usd) FROM spend GROUP BY label ORDER BY MIN(id)").fetchall())
        return {str(label): float(usd) for label, usd in rows}

    def _read(self, fn, *args):
        try:
            return fn(*args)
        except sqlite3.Error as e:
            raise InfirError(f"{self.path}: spend ledger: {e}") from None

    def _sums(self, label: str | None) -> tuple[float, float]:
        """(spent, with `label` only when given; reserved), each table checked in the same scan."""
        spent, bad = self._db.execute(
            f"SELECT COALESCE(SUM(CASE WHEN ? IS NULL OR label = ? THEN usd END), 0), MIN(CASE WHEN {_BAD} THEN id END)"
            " FROM spend", (label, label)).fetchone()
        self._refuse("spend", bad)
        held, bad = self._db.execute(f"SELECT COALESCE(SUM(usd), 0), MIN(CASE WHEN {_BAD} THEN id END) FROM reserved").fetchone()
        self._refuse("reserved", bad)
        return float(spent), float(held)

    def _refuse(self, table: str, row_id: int | None) -> None:
        if row_id is None:
            return
        value = self._db.execute(f"SELECT usd FROM {table} WHERE id = ?", (row_id,)).fetchone()[0]
        raise InfirError(
            f"{self.path}: row {row_id} of table {table} holds {value!r}, not an amount of USD (a non-negative "
            f"finite number); the spend ledger was damaged or edited, so llm.max_cost_usd cannot be kept: "
            f"restore the file or delete that row"
        )

    # -- reserving and settling ------------------------------------------------------------------
    def reserve(self, usd: float) -> int | None:
        """A reservation id, or None when the request would take the run past its cap."""
        usd = _amount(usd, self.path)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._drop_dead()
                if self.cap is not None:
                    spent, held = self._sums(None)
                    if spent + held + usd > self.cap:
                        self._db.execute("ROLLBACK")
                        return None
                cur = self._db.execute("INSERT INTO reserved (pid, usd, at) VALUES (?, ?, ?)", (os.getpid(), usd, time.time()))
                self._db.execute("COMMIT")
                return int(cur.lastrowid)
            except sqlite3.Error as e:
                self._rollback()
                raise InfirError(f"{self.path}: spend ledger: {e}") from None
            except InfirError:
                self._rollback()
                raise

    def fits_once_settled(self, usd: float) -> bool:
        """Whether `usd` would fit under the cap if nothing were reserved (what is in flight settles)."""
        if self.cap is None:
            return True
        return self.spent() + _amount(usd, self.path) <= self.cap

    def settle(self, reservation: int | None, usd: float, label: str | None = None) -> None:
        """Record what an answer cost and drop its reservation, in one transaction."""
        usd = _amount(usd, self.path)
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
            if pid != os.getpid() and not pid_alive(pid):
                self._db.execute("DELETE FROM reserved WHERE pid = ?", (pid,))

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


# An amount no ledger row may hold: not a number (text, blob, NULL), negative, or infinite (SQLite
# stores NaN as NULL; 9e999 reads as +Inf).
_BAD = "typeof(usd) NOT IN ('integer', 'real') OR usd < 0 OR usd >= 9e999"


def _amount(usd: float, path: Path) -> float:
    """A cost about to be recorded: a non-negative finite number, or the write is refused."""
    if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) or usd < 0:
        raise InfirError(f"{path}: refusing to record {usd!r} USD in the spend ledger (not a non-negative finite amount)")
    return float(usd)
