"""A per-stage lock so that two processes never write the same stage of one run.

filelock gives the same lock on every platform (flock on POSIX, msvcrt on Windows); like a bare
flock, the lock dies with the process, also on kill -9, so there is no stale lock to clean up.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.errors import InfirError


def holder_of(path: Path) -> str:
    """Who holds a lock, as its holder wrote it into the lock file ('pid N')."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:  # Windows refuses to read a locked region
        return "another process"


class StageLock:
    def __init__(self, stage_dir: Path):
        self.path = Path(stage_dir) / ".lock"
        self._lock: FileLock | None = None

    def __enter__(self) -> "StageLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise InfirError(
                f"{self.path.parent}: stage is being written by {holder_of(self.path)}; wait for it or stop it"
            ) from None
        # The holder's name for the refusal message. filelock >= 4 never truncates the file of a lock
        # it fails to take, so a refused process leaves this text in place.
        try:
            self.path.write_text(f"pid {os.getpid()}")
        except OSError:
            pass  # Windows: the locked region is not writable through a second handle; the message says "another process"
        self._lock = lock
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def held_by(stage_dir: Path) -> str | None:
    """Who holds a stage's lock now ('pid N'), or None when nobody does. Takes and drops the lock
    when free, so it never waits; a stage that has never run has no lock file and is not touched."""
    path = Path(stage_dir) / ".lock"
    if not path.is_file():
        return None
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return holder_of(path)
    lock.release()
    return None
