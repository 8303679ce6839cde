"""The Batch API runner's state file (`state.json`: submissions, batch ids, what is left) and its
lock, written atomically before every next step (a mixin of `BatchRunner`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from filelock import FileLock, Timeout

from pipeline.errors import InfirError
from pipeline.fileio import write_bytes_atomic
from pipeline.llm.openai_api.batch_remote import STATE_VERSION


class _StateFile:
    def _drop(self, sid: str) -> None:
        sub = self._state["submissions"].pop(sid)
        for name in (sub["keys_file"], f"{sid}.jsonl"):
            (self.state_dir / name).unlink(missing_ok=True)
        self._keys.pop(sid, None)

    # -- polling and results -------------------------------------------------------------------

    def _lock(self) -> FileLock:
        lock = FileLock(self.state_dir / ".lock", timeout=0)  # filelock: flock on POSIX, msvcrt on Windows
        try:
            lock.acquire()
        except Timeout:
            raise InfirError(f"batch state {self.state_dir}: in use by another process") from None
        return lock

    def _load(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        if not path.exists():
            return {"version": STATE_VERSION, "token": uuid.uuid4().hex[:12], "label": self.label, "next": 1,
                    "submissions": {}}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InfirError(f"batch state {path}: unreadable ({e}); move it away to start over") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InfirError(f"batch state {path}: unknown format (version {state.get('version')!r})")
        return state

    def _save(self) -> None:
        st = {**self._state, "submissions": {
            sid: {k: v for k, v in sub.items() if k != "this_run"} for sid, sub in self._state["submissions"].items()
        }}
        write_bytes_atomic(self.state_dir / "state.json", json.dumps(st, indent=1, sort_keys=True).encode("utf-8"))

    def _sub(self, sid: str) -> dict[str, Any]:
        return self._state["submissions"][sid]

    def _unfinished(self) -> list[str]:
        return [sid for sid, s in self._state["submissions"].items() if not s["done"] and s["batch_id"]]

    def _sub_keys(self, sid: str) -> list[str]:
        if sid not in self._keys:
            path = self.state_dir / self._sub(sid)["keys_file"]
            try:
                self._keys[sid] = path.read_text(encoding="utf-8").split()
            except OSError as e:
                raise InfirError(f"batch state {path}: {e}") from None
        return self._keys[sid]
