"""Retrieval errors. ``RetrievalError`` is an ``InfirError`` (printed as one line by the CLI)."""

from __future__ import annotations

from pipeline.errors import InfirError


class RetrievalError(InfirError, ValueError):
    """A user-facing retrieval failure (bad collection file, bad settings, corrupt index)."""
