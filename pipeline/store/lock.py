"""A per-stage lock so that two processes never write the same stage of one run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline.errors import InfirError


class StageLock:
    def __init__(self, stage_dir: Path):
        self.path = Path(stage_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "StageLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise InfirError(
                f"{self.path.parent}: stage is being written by {holder}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # The lock dies with the descriptor, also on kill -9: no stale lock to clean up.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
