"""The questions a person answers about a row, each mapped to the judge's checks.

A person answers four quick questions instead of the judge's nine checks; each question stands for
the checks it covers, and the judge "says yes" to a question when every mapped check passed. The
ids are fixed: labels.jsonl and audit.json name them.
"""

from __future__ import annotations

from pipeline.generation.models import CHECKS

#: question id -> (the question as the page asks it, the judge's checks it stands for).
QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "p_fits": ("P+ fits Q+ and I+", ("positive_fits",)),
    # HN1 separates I+ from I-: it fits I-, not I+, and P+ must stop fitting under I-.
    "hn1_fits": ("HN1 fits Q+ and I- but not I+",
                 ("hn1_fits", "hn1_fails_positive", "positive_fails_instruction_negative")),
    "hn2_fits": ("HN2 fits Q- and I+ but not Q+",
                 ("hn2_fits", "hn2_fails_positive", "positive_fails_query_negative")),
    "edits_minimal": ("I- and Q- are minimal, plausible edits of I+ and Q+",
                      ("instruction_negative_plausible", "query_negative_plausible")),
}
ANSWERS = ("yes", "no", "unsure")

# Every judge check is covered exactly once, so a new check cannot slip past the audit unmapped.
assert sorted(c for _, cs in QUESTIONS.values() for c in cs) == sorted(CHECKS), "QUESTIONS must map every check once"


def judge_answer(judge: dict, qid: str) -> bool | None:
    """The judge's answer to a question from its recorded checks (`sample.json` rows' "judge"):
    True when every mapped check passed, None when it judged none of them (a filter rejected the row)."""
    got = [judge.get(c) for c in QUESTIONS[qid][1]]
    if any(not isinstance(v, bool) for v in got):
        return None
    return all(got)
