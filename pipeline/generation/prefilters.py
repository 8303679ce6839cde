"""Cheap deterministic checks that reject degenerate candidates before the judge is paid."""

from __future__ import annotations

from rapidfuzz import fuzz

from pipeline.release.schema import INFIR_COLUMNS as FIELDS
from pipeline.sources.text import match_key, word_count


def prefilter(row: dict, s) -> list[str]:
    """Names of the failed pre-filters (empty: the row goes to the judge). `s`: VerifySettings."""
    failed: list[str] = []
    for f in FIELDS:
        if not (row.get(f) or "").strip():
            failed.append(f"prefilter_empty_{f}")
    if failed:
        return failed
    limits = {
        "instruction_positive": s.max_instruction_words,
        "instruction_negative": s.max_instruction_words,
        "query_negative": s.max_query_words,
        "hard_negative_document_1": s.max_passage_words,
        "hard_negative_document_2": s.max_passage_words,
    }
    for f, limit in limits.items():
        if word_count(row[f]) > limit:
            failed.append(f"prefilter_too_long_{f}")
    ipos, ineg = match_key(row["instruction_positive"]), match_key(row["instruction_negative"])
    if ipos == ineg or fuzz.ratio(ipos, ineg) >= s.near_equal_threshold:
        failed.append("prefilter_instruction_negative_equals_positive")
    if match_key(row["query_positive"]) == match_key(row["query_negative"]):
        failed.append("prefilter_query_negative_equals_positive")
    pos = match_key(row["document_positive"])
    for f in ("hard_negative_document_1", "hard_negative_document_2"):
        if fuzz.ratio(pos, match_key(row[f])) >= s.near_copy_threshold:
            failed.append(f"prefilter_{f}_copies_positive")
    # An instruction that quotes a long stretch of the passage gives the answer away.
    if fuzz.partial_ratio(ipos, pos) >= s.answer_copy_threshold and word_count(ipos) >= 8:
        failed.append("prefilter_instruction_copies_passage")
    return failed
