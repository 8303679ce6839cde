"""Shared config checks for the settings leaf modules: names that become paths, relative paths that
must stay inside their folder, release versions, and finite numbers.

They run as pydantic validators on the config models, so a TOML file and `--set` get the same checks,
and all of them before the first stage starts (a bad `[write]` value must not wait until after the
paid LLM stages). A leaf module: it imports nothing from infir but pipeline.errors.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated

from pydantic import AfterValidator, ConfigDict

# extra="forbid": a typo is an error, not a silent default. allow_inf_nan=False: `inf`/`nan` (TOML
# accepts both) are refused naming the key; JSON would save nan as null, i.e. silently "unset".
SECTION_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

# One path component: starts with a letter or digit (so never "." / ".." / a hidden name), then
# letters, digits, '.', '_' or '-'; no separators, no spaces, ASCII only (portable to every filesystem
# and the Hub). The same rule as release names have always had.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def check_safe_name(value: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a safe name: one path component of letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 100 characters, no '..')"
        )
    return value


def check_version(value: str) -> str:
    if not _VERSION.match(value):
        raise ValueError(f"{value!r} is not a release version: expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    return value


def check_inner_path(value: str) -> str:
    """A file name relative to its folder (e.g. `qrels/test.tsv` under source.path): no absolute
    path, no drive, no '..' component, so it cannot point outside that folder."""
    posix, win = PurePosixPath(value), PureWindowsPath(value)
    if not value or posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts:
        raise ValueError(f"{value!r} must be a relative path inside its folder (no leading '/', no '..')")
    return value


SafeName = Annotated[str, AfterValidator(check_safe_name)]
Version = Annotated[str, AfterValidator(check_version)]
InnerPath = Annotated[str, AfterValidator(check_inner_path)]


def check_min_max(lo: int, hi: int, lo_key: str, hi_key: str) -> None:
    if lo > hi:
        raise ValueError(f"{lo_key} ({lo}) must be <= {hi_key} ({hi})")
