"""A release never reaches outside its own folder.

A release is handed around (copied, downloaded, unpacked from an archive), so its manifest and card
are data from whoever made the copy. A manifest entry `../../../../etc/passwd` with that file's
sha256, an absolute path, or a file of the release replaced by a symbolic link to a file elsewhere
would otherwise be hashed by `write --verify`, uploaded by `publish` and read by `eval --release` and
`train`. Every path they take from a release goes through `release_path`, and the folder itself
through `release_files`; both refuse with one line naming the offending path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from pipeline.errors import InfirError

__all__ = ["release_error", "release_files", "release_path", "check_pattern"]


def release_error(release: Path, rel: str, why: str) -> InfirError:
    return InfirError(f"release {release}: {rel}: {why}")


def release_files(release: Path) -> list[str]:
    """Every file below `release` as a relative POSIX path, sorted. Refuses a symbolic link anywhere
    below the folder (to a file or to a folder: what it points to is not the release's), and an entry
    that is neither a regular file nor a folder (a FIFO would block the hashing for ever)."""
    release = Path(release)
    found: list[str] = []

    def unreadable(e: OSError) -> None:
        raise InfirError(f"release {release}: cannot read {e.filename}: {e.strerror or e}")

    # os.walk lists a symlinked folder among the folders without entering it (followlinks=False).
    for dirpath, dirnames, filenames in os.walk(release, onerror=unreadable):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            rel = p.relative_to(release).as_posix()
            try:
                mode = os.lstat(p).st_mode
            except OSError as e:
                raise InfirError(f"release {release}: {rel}: cannot read: {e.strerror or e}") from None
            if stat.S_ISLNK(mode):
                raise release_error(release, rel, f"is a symbolic link (to {os.readlink(p)}); a release holds its "
                                                  "own files only: replace the link by a copy of the file")
            if stat.S_ISREG(mode):
                found.append(rel)
            elif not stat.S_ISDIR(mode):
                raise release_error(release, rel, "is not a regular file (a FIFO, socket or device); remove it")
    return sorted(found)


def _escapes(rel: str) -> str | None:
    """Why `rel` cannot name a file inside the release, or None."""
    if "\\" in rel or "\x00" in rel:
        return "a backslash or NUL in the path"
    if rel.startswith("/") or PureWindowsPath(rel).drive or PurePosixPath(rel).is_absolute():
        return "an absolute path"
    parts = rel.split("/")
    if ".." in parts:
        return "a '..' component"
    if "" in parts or "." in parts:
        return "an empty or '.' component"
    return None


def check_pattern(release: Path, pattern: object, where: str) -> str:
    """A glob pattern (the card's `data_files`) that stays inside the release."""
    if not isinstance(pattern, str) or not pattern:
        raise release_error(release, where, f"path {pattern!r} is not a relative path")
    why = _escapes(pattern)
    if why:
        raise release_error(release, pattern, f"named in {where} but leaves the release ({why}); "
                                              "paths must name files inside the release folder")
    return pattern


def release_path(release: Path, rel: object, where: str) -> Path:
    """The file that `rel`, a path named in `where` (manifest.json, README.md), names inside
    `release`. Refuses a path that is absolute, has a `..`, passes through or ends at a symbolic
    link, or resolves outside the folder. Whether the file exists is the caller's check."""
    release = Path(release)
    name = check_pattern(release, rel, where)
    cur = release
    for part in name.split("/"):
        cur = cur / part
        if cur.is_symlink():
            link = cur.relative_to(release).as_posix()
            raise release_error(release, name, f"named in {where} but {link} is a symbolic link (to {os.readlink(cur)}); "
                                              "a release holds its own files only")
    # A belt to the braces above: whatever the path's spelling, it must land inside the folder.
    if not cur.resolve().is_relative_to(release.resolve()):
        raise release_error(release, name, f"named in {where} but resolves outside the release")
    return cur
