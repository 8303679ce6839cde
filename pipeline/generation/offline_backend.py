"""infir's offline backend: the InF-IR rules of `offline.py` registered as the scripted backend
named "offline" (no key, no network). Its model name carries a hash of the rules' code, so
changing a rule can never serve answers cached from the old rules, and its cache keys never
collide with a real model's."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from pipeline.generation.offline import HANDLERS
from pipeline.llm.backends import register_script

_RULE_SOURCES = ("offline.py", "lexical.py")

register_script("offline", HANDLERS)


@functools.lru_cache(maxsize=1)
def offline_model_name() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _RULE_SOURCES:
        h.update((here / name).read_bytes())
    return f"infir-offline@{h.hexdigest()[:8]}"
