"""Re-verify an upstream stage's shards before a downstream stage reads them.

A finished stage's `_SUCCESS.json` records the sha256 of every shard it wrote. A shard edited,
truncated or replaced after that (a hand fix, a half-restored backup, a bad disk) would otherwise
flow into the next stage and into a release unnoticed: a stage calls `verify_upstream` once at
its start, for each upstream stage it reads. Cost: one sha256 pass over each listed file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pipeline.errors import InfirError
from pipeline.store.ids import sha256_file

SUCCESS_NAME = "_SUCCESS.json"  # the marker's name (pipeline.store.shards.SUCCESS), named in errors


def verify_upstream(stage_dir: Path, success: dict) -> int:
    """Check every shard listed in `success` (the stage's parsed `_SUCCESS.json`) against its
    recorded sha256. Returns the number of shards checked; raises InfirError naming the first file
    that is missing or changed, or the marker when an entry is malformed or points outside the stage."""
    stage_dir = Path(stage_dir)
    marker = stage_dir / SUCCESS_NAME
    shards = success.get("shards", []) if isinstance(success, dict) else None
    if not isinstance(shards, list):
        raise InfirError(f"{marker}: corrupt success marker (no shard list); rerun the stage with --force")
    for entry in shards:
        name = entry.get("name") if isinstance(entry, dict) else None
        recorded = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(recorded, str) or not _inside(name):
            raise InfirError(f"{marker}: corrupt success marker (bad shard entry {entry!r}); rerun the stage with --force")
        path = stage_dir / name
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise InfirError(f"{path}: listed in {marker} but missing; rerun the stage with --force") from None
        except OSError as e:
            raise InfirError(f"{path}: cannot read: {e.strerror or e}") from None
        if actual != recorded:
            raise InfirError(
                f"{path}: checksum mismatch (recorded sha256 {recorded[:12]}..., now {actual[:12]}...): "
                "the shard changed after its stage finished; rerun the stage with --force"
            )
    return len(shards)


def _inside(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name
