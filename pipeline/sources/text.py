"""Text normalisation and near-duplicate lookup shared by source cleaning and decontamination."""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz import fuzz

_WS = re.compile(r"\s+")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORD = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> str:
    """Unicode NFC, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = _CTRL.sub(" ", text)
    return _WS.sub(" ", text).strip()


def has_visible(text: str) -> bool:
    """Whether `text` shows anything: some character that is not whitespace (Z*), a control or a
    format character (C*: zero-width space/joiners, word joiner, BOM, soft hyphen, ...). A query of
    only `\u200b\u2060\ufeff` passes a strip() check but is empty to a reader and to a model."""
    return any(not unicodedata.category(ch).startswith(("Z", "C")) for ch in text)


def bound_words(text: str, limit: int) -> str | None:
    """`text` cut to its first `limit` words, or None when it has no more than that. Normalised
    text has single spaces, so a text of under 2*limit characters cannot exceed `limit` words:
    only the rare long passage pays for the split."""
    if len(text) < 2 * limit:
        return None
    words = text.split()
    return " ".join(words[:limit]) if len(words) > limit else None


def match_key(text: str) -> str:
    """Comparison form: case-folded words only, so punctuation and case never hide a duplicate."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKD", text).casefold()))


def word_count(text: str) -> int:
    return len(text.split())


class NearDupIndex:
    """Finds entries whose match key is equal or near-equal (rapidfuzz ratio) to a probe.

    Comparing every pair is quadratic; two strings with ratio >= ~90 nearly always share one
    of their two longest words, so candidates are blocked on those words.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.exact: dict[str, str] = {}
        self.blocks: dict[str, list[tuple[str, str]]] = {}

    @staticmethod
    def _block_keys(key: str) -> list[str]:
        words = sorted(set(key.split()), key=lambda w: (-len(w), w))
        return words[:2] or [key]

    def add(self, text: str, label: str) -> None:
        key = match_key(text)
        if not key:
            return
        self.exact.setdefault(key, label)
        for b in self._block_keys(key):
            self.blocks.setdefault(b, []).append((key, label))

    def find(self, text: str) -> tuple[str, float] | None:
        """(label, score) of an equal or near-equal entry, else None."""
        key = match_key(text)
        if not key:
            return None
        if key in self.exact:
            return self.exact[key], 100.0
        if self.threshold >= 100:
            return None
        best: tuple[str, float] | None = None
        seen: set[str] = set()
        for b in self._block_keys(key):
            for cand, label in self.blocks.get(b, ()):
                if cand in seen:
                    continue
                seen.add(cand)
                score = fuzz.ratio(key, cand, score_cutoff=self.threshold)
                if score and (best is None or score > best[1]):
                    best = (label, score)
        return best
