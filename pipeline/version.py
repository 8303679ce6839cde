"""`infir --version`: the installed package's version and, from a git checkout, its revision."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pipeline


def package_version() -> str:
    try:
        return version("infir")
    except PackageNotFoundError:  # run from a checkout on PYTHONPATH, not installed
        return pipeline.__version__


def git_revision() -> str | None:
    """Short commit of the checkout the code runs from (`+dirty` with local changes); None for an
    installed wheel, or where git is missing."""
    root = Path(pipeline.__file__).resolve().parent.parent
    if not (root / ".git").exists():  # a file in a worktree, a folder in a clone
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def version_line() -> str:
    rev = git_revision()
    return f"infir {package_version()}" + (f" (git {rev})" if rev else "")
