"""Release versions: MAJOR.MINOR.PATCH folder names under releases/<name>/."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pipeline.errors import InfirError

_VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def parse_version(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v or "")
    if not m:
        raise InfirError(f"invalid release version {v!r}: expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    return int(m[1]), int(m[2]), int(m[3])


def existing_versions(name_dir: Path) -> list[str]:
    """Completed versions under releases/<name>/, oldest first (temp dirs are ignored)."""
    if not name_dir.is_dir():
        return []
    vs = [p.name for p in name_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    return sorted(vs, key=parse_version)


def bump_version(version: str, bump: str) -> str:
    major, minor, patch = parse_version(version)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise InfirError(f"invalid bump {bump!r}: expected patch, minor or major")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(name_dir: Path) -> list[Path]:
    """Remove `.tmp-<version>-<pid>-<id>` folders whose writer died (killed mid-release)."""
    removed = []
    for p in name_dir.glob(".tmp-*"):
        parts = p.name.split("-")
        pid = next((int(x) for x in parts[2:-1] if x.isdigit()), None)
        if p.is_dir() and pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
