"""infir: build instruction-following retrieval training corpora (InF-IR style)."""

__version__ = "0.1.0"
