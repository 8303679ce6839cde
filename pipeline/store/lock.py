"""A per-stage lock so that two processes never write the same stage of one run, and read holds
so that a stage is never rewritten under a later stage that is reading it.

filelock gives the same lock on every platform (flock on POSIX, msvcrt on Windows); like a bare
flock, the lock dies with the process, also on kill -9, so there is no stale lock to clean up.

A reader/writer lock in one file cannot say who holds it, and the refusal must name the process
(filelock's own `ReadWriteLock` keeps its state in SQLite, which says nothing of its holders and is
unsafe on the network filesystems a Ray cluster shares `runs/` over). So each reader holds a lock
file of its own beside the stage lock (`.read-<stage>-<host>-<pid>-<random>.lock`, holding
"pid N (stage)"), and the two sides check each other in an order that leaves no gap:
- a reader takes its hold, then checks that the stage lock is free (else it lets go and refuses);
- a writer takes the stage lock, then, before it changes anything, checks that no hold is live.
Whichever comes second sees the first. A hold left by a killed reader is free and is removed.
"""

from __future__ import annotations

import os
import socket
import uuid
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


READ_PREFIX = ".read-"


class ReadLock:
    """A read hold on a stage's folder, taken by a later stage (`reader`) for as long as it runs:
    while it is held, `refuse_if_read` stops the stage's own writer before it changes anything.
    A folder that does not exist (a stage never run) is not created: there is nothing to protect,
    and the reader stops at "has not finished"."""

    def __init__(self, stage_dir: Path, reader: str):
        self.dir = Path(stage_dir)
        self.reader = reader
        self.path: Path | None = None
        self._lock: FileLock | None = None

    def __enter__(self) -> "ReadLock":
        if not self.dir.is_dir():
            return self
        self.path = self.dir / f"{READ_PREFIX}{self.reader}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()  # a fresh name: nobody else can hold it
        except (Timeout, OSError) as e:
            raise InfirError(f"{self.path}: cannot take a read hold on {self.dir.name}: {e}") from None
        self._lock = lock
        try:
            self.path.write_text(f"pid {os.getpid()} ({self.reader})")
        except OSError:
            pass  # Windows: see StageLock; the name still carries the pid
        writer = held_by(self.dir)
        if writer is not None:
            self.__exit__()
            raise InfirError(
                f"{self.dir}: stage is being written by {writer}; `{self.reader}` reads it: wait for it to finish"
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.path is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass  # a writer's cleanup may have it open for a moment; it is free, so it never blocks
            self.path = None


def readers_of(stage_dir: Path) -> list[str]:
    """Who holds a read hold on a stage's folder now ('pid N (stage)'). A hold whose process is gone
    is free: it is removed, never counted."""
    live = []
    for path in sorted(Path(stage_dir).glob(f"{READ_PREFIX}*.lock")):
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            text = holder_of(path)
            live.append(_pid_in_name(path) if text == "another process" else text)
            continue
        except OSError:
            continue  # removed by its reader meanwhile
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            lock.release()
    return live


def _pid_in_name(path: Path) -> str:
    # .read-<stage>-<host>-<pid>-<random>.lock: a reader that had not written its text yet
    parts = path.name[: -len(".lock")].split("-")
    return f"pid {parts[-2]}" if len(parts) >= 4 and parts[-2].isdigit() else "another process"


def refuse_if_read(stage_dir: Path) -> None:
    """One clear line when a later stage is reading this stage's folder: called by the stage's
    writer, holding the stage lock, before it clears or writes anything."""
    readers = readers_of(stage_dir)
    if readers:
        raise InfirError(
            f"{stage_dir}: being read by {', '.join(readers)}; rewriting it now would change that stage's "
            "input under it: wait for it to finish or stop it"
        )
