"""manifest.json helpers: hashing, canonical JSON, content comparison, path scrubbing."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import InfirError
from pipeline.fileio import sha256_file  # noqa: F401  (re-exported)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "infir-release/1"
#: Keys left out when deciding whether two releases have the same content.
VOLATILE_KEYS = ("created_at",)
#: Derived artifacts (card, plots, st export): their bytes may differ across library versions while the
#: data does not, so the content comparison uses shards + the rest of the manifest instead.
DERIVED_KEYS = ("files",)


#: The last second `datetime` can write (9999-12-31T23:59:59Z).
MAX_SOURCE_DATE_EPOCH = 253_402_300_799


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), the release's `created_at` when set. A value that
    is not a whole number of seconds from 0 to the year 9999 is refused: the specification asks a
    build to fail rather than pick another time, and datetime would raise on it."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return None
    # ASCII digits only (str.isdigit takes "²"); at most 12 of them before int(): Python refuses to
    # convert a string of over 4300 digits with a ValueError of its own.
    if re.fullmatch(r"[0-9]{1,12}", raw) is None or int(raw) > MAX_SOURCE_DATE_EPOCH:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise InfirError(
            f"SOURCE_DATE_EPOCH={shown!r}: expected a whole number of seconds since 1970-01-01 UTC, "
            f"0 to {MAX_SOURCE_DATE_EPOCH} (the year 9999); fix it or unset it"
        )
    return int(raw)


def created_at() -> str:
    """The manifest's `created_at`: SOURCE_DATE_EPOCH if set, else now (UTC)."""
    sde = source_date_epoch()
    when = datetime.now(timezone.utc) if sde is None else datetime.fromtimestamp(sde, timezone.utc)
    return when.isoformat(timespec="seconds")


def _clean_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_clean_json(v) for v in obj]
        return sorted(items, key=repr) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _clean_json(obj.item())
    return str(obj)


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(_clean_json(manifest), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def load_manifest(release_dir: Path) -> dict[str, Any]:
    path = Path(release_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InfirError(f"{path}: missing manifest.json; not a release directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InfirError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InfirError(f"{path}: not an infir release manifest (format {data.get('format')!r})")
    return data


def content_key(manifest: dict[str, Any]) -> str:
    """Canonical JSON of the manifest without created_at and derived-file hashes."""
    core = {k: v for k, v in manifest.items() if k not in VOLATILE_KEYS + DERIVED_KEYS}
    return json.dumps(_clean_json(core), sort_keys=True, ensure_ascii=False)


def content_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Top-level manifest keys whose content differs (ignoring created_at and derived files)."""
    keys = (set(a) | set(b)) - set(VOLATILE_KEYS) - set(DERIVED_KEYS)
    return sorted(
        k
        for k in keys
        if json.dumps(_clean_json(a.get(k)), sort_keys=True) != json.dumps(_clean_json(b.get(k)), sort_keys=True)
    )


# --- scrubbing local paths / user names out of anything that goes into a release -------------------

_WIN_ABS = re.compile(r"^[A-Za-z]:[\\/]")


def _local_roots() -> list[tuple[str, str]]:
    roots: list[tuple[str, str]] = []
    try:
        cwd = str(Path.cwd().resolve())
        if cwd.count(os.sep) >= 2:
            roots.append((cwd + os.sep, ""))
            roots.append((cwd, "."))
    except OSError:
        pass
    home = str(Path.home())
    if home and home not in ("/", "") and home.count(os.sep) >= 1:
        roots.append((home + os.sep, "~/"))
        roots.append((home, "~"))
    return roots


def scrub_path_string(value: str) -> str:
    """Make a string safe to publish: absolute local paths become relative or anonymous."""
    s = value
    is_abs = s.startswith("/") or bool(_WIN_ABS.match(s)) or s.startswith("~")
    if is_abs and "\n" not in s and len(s) < 4096:
        p = os.path.expanduser(s)
        for root, repl in _local_roots():
            if p.startswith(root) and repl == "":
                return PurePosixPath(*Path(p[len(root):]).parts).as_posix()
        name = PurePosixPath(s.replace("\\", "/")).name
        return f"<local>/{name}" if name else "<local>"
    for root, repl in _local_roots():
        if root in s:
            s = s.replace(root, repl or "./")
    return s


_SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|secret|password|passwd|token|auth|authorization)$", re.I)


def scrub(obj: Any) -> Any:
    """Recursively scrub local absolute paths (and secret-looking values) out of a JSON-like value."""
    if isinstance(obj, dict):
        return {
            scrub(k) if isinstance(k, str) else k: (
                "<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) and isinstance(v, str) and v else scrub(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, Path):
        return scrub_path_string(str(obj))
    if isinstance(obj, str):
        return scrub_path_string(obj)
    return obj
