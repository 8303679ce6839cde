"""Retrieval errors. ``RetrievalError`` is an ``InfirError`` (printed as one line by the CLI)."""

from __future__ import annotations

try:  # pipeline/errors.py is owned by the CLI layer; retrieval stays importable without it.
    from pipeline.errors import InfirError
except ImportError:  # pragma: no cover - only while pipeline.errors does not exist yet

    class InfirError(Exception):  # type: ignore[no-redef]
        """Fallback stand-in for ``pipeline.errors.InfirError``."""


class RetrievalError(InfirError, ValueError):
    """A user-facing retrieval failure (bad collection file, bad settings, corrupt index)."""
