"""Files and hashes every package shares: canonical JSON, sha256 of a file, atomic writes.

One implementation each (the store, the LLM cache keys, the batch state, the release and the
trainer all use these). A leaf module: the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def _integral_floats_as_int(obj: Any) -> Any:
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _integral_floats_as_int(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_integral_floats_as_int(v) for v in obj]
    return obj


def canonical_json(obj: Any, *, integral_floats_as_int: bool = False) -> str:
    """Sorted keys, no spaces, UTF-8 kept. `integral_floats_as_int`: 0.0 and 0 give the same text
    (LLM cache keys: a TOML float and an int of the same value must be the same request)."""
    if integral_floats_as_int:
        obj = _integral_floats_as_int(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write to a temp name beside `path`, then rename: a reader sees the old file or the new one,
    never a part. Raises OSError (callers name the path in their own error)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(obj: Any, path: Path, *, fsync: bool = False, sort_keys: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def pid_alive(pid: int) -> bool:
    """Is the process that wrote its pid into a file (a reservation, a temp folder) still running
    on this machine? Leftovers of a dead one may be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
