"""The lexical relevance model of the offline backend, shared by its generator and its judge.

Offline, relevance is made checkable: a passage answers a query when it contains the query's head
term (its longest content word) and at least half of its content words; it satisfies an
instruction when it contains every word of the instruction's quoted constraint. The generator
builds rows that satisfy these rules and the judge checks them again from the texts alone, so a
corrupted row fails for a reason anyone can recompute.
"""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

COVERAGE = 0.5

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves vs versus best good get make much many long way use used
using one two three well like need needs per way ways does mean means""".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_QUOTED = re.compile(r'"([^"]+)"')


def stem(word: str) -> str:
    """A light, deterministic suffix stripper: enough to match boil/boiled/boiling, egg/eggs."""
    w = word.lower().replace("'s", "")
    for suf, min_len in (("ies", 5), ("ing", 6), ("ed", 5), ("es", 5), ("s", 4)):
        if w.endswith(suf) and len(w) >= min_len and not w.endswith("ss"):
            w = w[: -len(suf)] + ("y" if suf == "ies" else "")
            break
    return w


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Surface content words in order (no stopwords, at least 3 characters)."""
    return [w for w in words(text) if w not in STOPWORDS and len(w) >= 3]


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in content_words(text)}


def head(query: str) -> str | None:
    """The query's head term: its longest content word (the later one on ties), stemmed."""
    ws = content_words(query)
    if not ws:
        return None
    best = max(range(len(ws)), key=lambda i: (len(ws[i]), i))
    return stem(ws[best])


def coverage(query: str, passage_stems: set[str]) -> float:
    q = content_stems(query)
    return len(q & passage_stems) / len(q) if q else 0.0


def answers(query: str, passage: str) -> tuple[bool, str]:
    """Does the passage answer the query? (verdict, reason)"""
    p = content_stems(passage)
    h = head(query)
    if h is None:
        return False, "the query has no content words"
    if h not in p:
        return False, f"lacks the query's head term '{h}'"
    cov = coverage(query, p)
    if cov < COVERAGE:
        return False, f"covers {cov:.0%} of the query's content words (< {COVERAGE:.0%})"
    return True, f"has the head term '{h}' and covers {cov:.0%} of the query"


def constraint(instruction: str) -> str | None:
    m = _QUOTED.search(instruction)
    return m.group(1).strip() if m else None


def satisfies(instruction: str, passage: str) -> tuple[bool, str]:
    """Does the passage meet the instruction's quoted constraint? (verdict, reason)"""
    term = constraint(instruction)
    if not term:
        return False, "the instruction states no checkable constraint"
    need = content_stems(term) or {stem(w) for w in words(term)}
    missing = need - content_stems(passage)
    if missing:
        return False, f"does not mention '{term}'"
    return True, f"mentions '{term}'"


def fits(query: str, instruction: str, passage: str) -> tuple[bool, str]:
    ok_q, why_q = answers(query, passage)
    if not ok_q:
        return False, f"query: {why_q}"
    ok_i, why_i = satisfies(instruction, passage)
    if not ok_i:
        return False, f"instruction: {why_i}"
    return True, f"{why_q}; {why_i}"


def word_edit_distance(a: str, b: str) -> int:
    """Edit distance counted in words: how minimal an edit is (rapidfuzz's Levenshtein over word lists)."""
    return Levenshtein.distance(words(a), words(b))
