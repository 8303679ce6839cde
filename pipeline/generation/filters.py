"""The deterministic filters: every check that needs no model, run before any judge money is spent.

Each filter has its own name, so a rejected row says which one failed and `status` counts each.
Edit sizes are word-level Levenshtein distances (rapidfuzz over token lists); near-duplicates are
rapidfuzz ratios over normalised text. `FilterSettings` (the `[filter]` section) holds the bounds.
"""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from pipeline.columns import INFIR_COLUMNS
from pipeline.sources.text import match_key, word_count

_WORD = re.compile(r"\w+", re.UNICODE)
#: Texts the LLM wrote (a hard negative only when it has no passage id: one taken from the corpus
#: is the corpus's text and is not judged for template leftovers).
_WRITTEN = ("instruction_positive", "instruction_negative", "query_negative")
_TEMPLATE = re.compile(r"\{\{|\}\}|\{(query|instruction|passage|near_misses|candidates)\}|</?data\b|###\s*(system|user)", re.I)
_JSON = re.compile(r'^\s*[\[{]|"\s*:\s*["\[{]|\{\s*"|\\"')
_REFUSAL = re.compile(
    r"\b(I\s+(cannot|can't|can not|am unable to|won't)|as an AI\b|I'm sorry,? but|I apologi[sz]e)", re.I)


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def edit_words(a: str, b: str) -> int:
    """Word-level edit distance: insertions, deletions and substitutions of whole words."""
    return Levenshtein.distance(tokens(a), tokens(b))


def longest_shared_run(a: str, b: str) -> int:
    """Length in words of the longest run of consecutive words `a` and `b` share."""
    ta, tb = tokens(a), tokens(b)
    where: dict[str, list[int]] = {}
    for j, y in enumerate(tb):
        where.setdefault(y, []).append(j)
    # The longest-common-substring table, keeping only the cells where the words match (a row of the
    # full table is mostly zeros: this visits matches only, ~20x fewer steps on an I+ and its P+).
    best, prev = 0, {}
    for x in ta:
        cur = {j: prev.get(j - 1, 0) + 1 for j in where.get(x, ())}
        if cur:
            best = max(best, max(cur.values()))
        prev = cur
    return best


_C0 = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # every Cc character below U+0080 but \t \n \r


def _non_text(text: str) -> bool:
    """C0 control characters (other than whitespace), surrogates, private-use or unassigned code
    points, U+FFFD. C1 controls (U+0080-U+009F) are left alone: they are the usual trace of
    cp1252 text decoded as Latin-1 in web corpora (MS MARCO has thousands), not the model's doing."""
    if _C0.search(text):
        return True
    if text.isascii():  # the common case: one C-speed scan instead of a category look-up per character
        return False
    for ch in text:
        # Below U+00A0 only C0 (searched above) and C1 (left alone) can fail: every Cc is below it.
        if ch >= "\xa0" and (unicodedata.category(ch) in ("Cs", "Co", "Cn") or ch == "\ufffd"):
            return True
    return False


def _ratio_outside(n: int, base: int, bounds: tuple[float, float]) -> bool:
    ratio = n / max(base, 1)
    return not (bounds[0] <= ratio <= bounds[1])


def _sanity(row: dict) -> list[str]:
    failed = []
    fields = list(_WRITTEN) + [f"hard_negative_document_{i}" for i in (1, 2) if not row.get(f"hn{i}_passage_id")]
    for f in fields:
        text = row[f]
        for kind, bad in (("template_leftover", _TEMPLATE.search(text)), ("json_fragment", _JSON.search(text)),
                          ("refusal", _REFUSAL.search(text)), ("non_text_characters", _non_text(text))):
            if bad:
                failed.append(f"{kind}_{f}")
    return failed


def _minimal_edits(row: dict, s) -> list[str]:
    """I- must be a small edit of I+, and Q- of Q+: few words changed, length kept."""
    failed = []
    for neg, pos, frac, bounds in (
        ("instruction_negative", "instruction_positive", s.max_instruction_edit_fraction, s.instruction_length_ratio),
        ("query_negative", "query_positive", s.max_query_edit_fraction, s.query_length_ratio),
    ):
        n_pos = len(tokens(row[pos]))
        too_many = edit_words(row[pos], row[neg]) > max(s.min_edit_allowance, frac * n_pos)
        if too_many or _ratio_outside(len(tokens(row[neg])), n_pos, bounds):
            failed.append(f"{neg}_not_minimal")
    return failed


def _negatives(row: dict, s) -> list[str]:
    failed = []
    pos = match_key(row["document_positive"])
    n_pos = word_count(row["document_positive"])
    keys = {}
    for f in ("hard_negative_document_1", "hard_negative_document_2"):
        keys[f] = match_key(row[f])
        if fuzz.ratio(pos, keys[f]) >= s.near_copy_threshold:
            failed.append(f"{f}_copies_positive")
        if _ratio_outside(word_count(row[f]), n_pos, s.negative_length_ratio):
            failed.append(f"{f}_length_ratio")
    if fuzz.ratio(keys["hard_negative_document_1"], keys["hard_negative_document_2"]) >= s.near_copy_threshold:
        failed.append("hard_negatives_duplicate")
    return failed


def run_filters(row: dict, s) -> list[str]:
    """Names of the filters the row fails (empty: it goes to the judge). `s`: FilterSettings."""
    failed = [f"empty_{f}" for f in INFIR_COLUMNS if not (row.get(f) or "").strip()]
    if failed:
        return failed
    limits = {
        "instruction_positive": s.max_instruction_words,
        "instruction_negative": s.max_instruction_words,
        "query_negative": s.max_query_words,
        "hard_negative_document_1": s.max_passage_words,
        "hard_negative_document_2": s.max_passage_words,
    }
    failed += [f"too_long_{f}" for f, limit in limits.items() if word_count(row[f]) > limit]
    ipos, ineg = match_key(row["instruction_positive"]), match_key(row["instruction_negative"])
    if ipos == ineg or fuzz.ratio(ipos, ineg) >= s.near_equal_threshold:
        failed.append("instruction_negative_equals_positive")
    if match_key(row["query_positive"]) == match_key(row["query_negative"]):
        failed.append("query_negative_equals_positive")
    failed += _minimal_edits(row, s)
    failed += _negatives(row, s)
    # An instruction that quotes a long stretch of the passage gives the answer away.
    if fuzz.partial_ratio(ipos, match_key(row["document_positive"])) >= s.answer_copy_threshold and word_count(ipos) >= 8:
        failed.append("instruction_copies_passage")
    if longest_shared_run(row["instruction_positive"], row["document_positive"]) >= s.leak_ngram_words:
        failed.append("instruction_leaks_passage")
    failed += _sanity(row)
    disabled = set(s.disabled)
    return [f for f in failed if f not in disabled]
