"""The offline backend: deterministic answers with no key and no network.

It speaks the same protocol as a real model (a chat.completion with JSON content), so every layer
above it (cache, parsing, stages) runs unchanged. Its generator builds rows from checkable
constraints (pipeline.generation.lexical) and its judge re-checks them from the texts alone; it
rejects what fails them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter

from pipeline.generation import lexical as lx
from pipeline.generation.models import CHECKS

TEMPLATES = (
    'I only want results that specifically mention "{t}"; anything that never discusses "{t}" is not relevant to me.',
    'Relevant results must talk about "{t}" directly. Skip general overviews that do not mention "{t}".',
    'Please focus on "{t}": a result only counts if it covers "{t}", not just the general topic.',
    'I am looking for information that involves "{t}", so leave out anything that does not mention "{t}".',
)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


# The generator tries every content word of P+ against the same few near misses, so the same
# texts are stemmed and matched hundreds of times per row; these caches make that once per text
# (a 1,000-row MS MARCO generate went from ~25 s to ~2 s). Pure functions of their arguments.
_CACHE = 16384


@functools.lru_cache(maxsize=_CACHE)
def _stems(text: str) -> frozenset[str]:
    return frozenset(lx.content_stems(text))


@functools.lru_cache(maxsize=_CACHE)
def _answers(query: str, passage: str) -> bool:
    return lx.answers(query, passage)[0]


@functools.lru_cache(maxsize=_CACHE)
def _term_stats(text: str) -> tuple[tuple[str, str, int], ...]:
    """(stem, first surface form, count of the stem) for the content words of a text, in order."""
    words = lx.content_words(text)
    counts = Counter(lx.stem(w) for w in words)
    first: dict[str, str] = {}
    for w in words:
        first.setdefault(lx.stem(w), w)
    return tuple((st, w, counts[st]) for st, w in first.items())


@functools.lru_cache(maxsize=_CACHE)
def _sentences(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", text) if x.strip())


def _surface_terms(text: str) -> dict[str, str]:
    """stem -> first surface form, for the content words of a text."""
    return {st: w for st, w, _ in _term_stats(text)}


def _new_term(exclude: set[str], candidate: str, longer_than: int = 0) -> str | None:
    """A content word of the candidate absent from the excluded stems, most frequent then longest."""
    options = [
        (n, len(w), w)
        for s, w, n in _term_stats(candidate)
        if s not in exclude and len(w) >= 4 and len(w) > longer_than and not w.isdigit()
    ]
    return max(options)[2] if options else None


def _swap_head(query: str, new: str) -> str:
    """Q+ with its head word replaced by `new`, everything else kept as typed."""
    h = lx.head(query)
    qwords = lx.words(query)
    pos = max((i for i, w in enumerate(qwords) if lx.stem(w) == h and w not in lx.STOPWORDS), default=None)
    if pos is None:
        return f"{query} {new}"
    target = qwords[pos]
    idx = query.lower().rfind(target)
    return query[:idx] + new + query[idx + len(target):]


def _find_hn1(query: str, t: set[str], exclude: set[str], candidates: list[str],
              passage: str | None = None) -> tuple[str, str] | None:
    """A passage that answers Q+ but lacks the constraint, and the new constraint word it offers.

    First from the collection; a corpus rarely holds a second passage answering the same query,
    so then it is written the way an LLM would: the positive's sentences that answer Q+ without
    the constraint, continued by a near miss that carries another constraint word.
    """
    for c in candidates:
        if t <= _stems(c) or not _answers(query, c):
            continue
        t2 = _new_term(exclude, c)
        if t2:
            return c, t2
    if not passage:
        return None
    h = lx.head(query)
    lead = [x for x in _sentences(passage) if h in _stems(x) and not t <= _stems(x)][:2]
    if not lead:
        return None
    budget = max(40, int(len(passage.split()) * 1.1))
    for c in candidates:
        if t <= _stems(c):
            continue
        body = list(lead)
        for x in _sentences(c):
            if len(" ".join(body + [x]).split()) > budget:
                break
            body.append(x)
        if len(body) == len(lead):
            continue
        text = " ".join(body)
        t2 = _new_term(exclude, " ".join(body[len(lead):]))
        if t2 and not t <= lx.content_stems(text) and lx.answers(query, text)[0]:
            return text, t2
    return None


def _find_hn2(query: str, t: set[str], exclude: set[str], candidates: list[str]) -> tuple[str, str] | None:
    """A candidate with the constraint that misses Q+'s head, and the Q- that it answers."""
    h = lx.head(query)
    longest_other = max((len(w) for w in lx.content_words(query) if lx.stem(w) != h), default=0)
    for c in candidates:
        cs = _stems(c)
        if not t <= cs or (h is not None and h in cs):
            continue
        b = _new_term(exclude, c, longer_than=longest_other)
        if b and lx.answers(_swap_head(query, b), c)[0]:
            return c, _swap_head(query, b)
    return None


def generate_instruction(query: str, passage: str, near_misses: list[str]) -> dict:
    """Pick a constraint word of P+ that the near misses split: some answer Q+ without it (HN1
    material), some carry it without Q+'s head (HN2 material)."""
    q_stems, p_stems = _stems(query), _stems(passage)
    nm_stems = [_stems(n) for n in near_misses]
    best, best_key = None, None
    for t, surface, count in _term_stats(passage):
        if t in q_stems or len(t) < 4 or surface.isdigit():
            continue
        exclude = p_stems | q_stems | {t}
        feasible = (_find_hn1(query, {t}, exclude, near_misses, passage) is not None) + (
            _find_hn2(query, {t}, exclude, near_misses) is not None
        )
        lacking = sum(t not in s for s in nm_stems)
        key = (feasible, lacking, count, len(surface), surface)
        if best_key is None or key > best_key:
            best, best_key = surface, key
    if best is None:  # a passage of stopwords and query words only: take its longest word
        ws = lx.content_words(passage) or lx.words(passage) or ["information"]
        best = max(ws, key=len)
    template = TEMPLATES[_h(query + passage) % len(TEMPLATES)]
    return {"instruction": template.format(t=best), "kind": "constraint"}


def poison(query: str, instruction: str, passage: str, candidates: list[str]) -> dict:
    term = lx.constraint(instruction) or ""
    t = lx.content_stems(term)
    exclude = lx.content_stems(passage) | lx.content_stems(query) | t
    found1 = _find_hn1(query, t, exclude, candidates, passage)
    if found1:
        hn1, t2 = found1
    else:  # best effort; the judge rejects what does not hold
        hn1 = next((c for c in candidates if not t <= lx.content_stems(c)), candidates[0] if candidates else passage)
        t2 = _new_term(exclude, hn1) or "other details"
    ineg = instruction.replace(f'"{term}"', f'"{t2}"') if term else instruction + f' It must mention "{t2}".'
    found2 = _find_hn2(query, t, exclude, candidates)
    if found2:
        hn2, qneg = found2
    else:
        hn2 = next((c for c in candidates if c != hn1), hn1)
        qneg = _swap_head(query, _new_term(exclude, hn2) or "alternative")
    return {
        "instruction_negative": ineg,
        "hard_negative_document_1": hn1,
        "query_negative": qneg,
        "hard_negative_document_2": hn2,
    }


def judge(v: dict) -> dict:
    q, i, p = v["query"], v["instruction"], v["passage"]
    ineg, qneg, hn1, hn2 = v["instruction_negative"], v["query_negative"], v["hard_negative_1"], v["hard_negative_2"]

    def holds(ok_reason):
        return {"passed": ok_reason[0], "reason": ok_reason[1]}

    def fails(ok_reason):
        ok, why = ok_reason
        return {"passed": not ok, "reason": ("still fits: " if ok else "") + why}

    def plausible_instruction() -> dict:
        if ineg.strip() == i.strip():
            return {"passed": False, "reason": "I- is identical to I+"}
        if not lx.constraint(ineg):
            return {"passed": False, "reason": "I- states no checkable constraint"}
        d = lx.word_edit_distance(i, ineg)
        if d > 3:
            return {"passed": False, "reason": f"I- differs from I+ by {d} words (> 3): not a minimal edit"}
        return {"passed": True, "reason": f"I- is a {d}-word edit of I+"}

    def plausible_query() -> dict:
        if qneg.strip().lower() == q.strip().lower():
            return {"passed": False, "reason": "Q- is identical to Q+"}
        d = lx.word_edit_distance(q, qneg)
        if d > 2 or not lx.content_words(qneg):
            return {"passed": False, "reason": f"Q- differs from Q+ by {d} words (> 2): not a minimal edit"}
        return {"passed": True, "reason": f"Q- is a {d}-word edit of Q+"}

    verdicts = {
        "positive_fits": holds(lx.fits(q, i, p)),
        "positive_fails_instruction_negative": fails(lx.fits(q, ineg, p)),
        "positive_fails_query_negative": fails(lx.fits(qneg, i, p)),
        "hn1_fits": holds(lx.fits(q, ineg, hn1)),
        "hn2_fits": holds(lx.fits(qneg, i, hn2)),
        "hn1_fails_positive": fails(lx.fits(q, i, hn1)),
        "hn2_fails_positive": fails(lx.fits(q, i, hn2)),
        "instruction_negative_plausible": plausible_instruction(),
        "query_negative_plausible": plausible_query(),
    }
    assert tuple(verdicts) == CHECKS
    return verdicts


HANDLERS = {
    "generate_instruction": lambda v: generate_instruction(v["query"], v["passage"], list(v.get("near_misses") or [])),
    "poison": lambda v: poison(v["query"], v["instruction"], v["passage"], list(v.get("candidates") or [])),
    "judge": judge,
    # The judge cascade's first judge: the same rules, certain of every verdict.
    "judge_first": lambda v: {c: {"reason": x["reason"], "passed": x["passed"], "confidence": 1.0} for c, x in judge(v).items()},
}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OfflineBackend:
    """Deterministic backend: same request, same answer; the prompt's name selects the task."""

    name = "offline"

    async def complete(self, body: dict, task) -> dict:
        handler = HANDLERS.get(task.prompt.name)
        if handler is None:
            content = json.dumps({"error": f"the offline backend has no handler for prompt '{task.prompt.name}'"})
            finish = "stop"
        else:
            content = json.dumps(handler(task.variables), ensure_ascii=False)
            finish = "stop"
        prompt_tokens = sum(_tokens(m["content"]) for m in body["messages"])
        completion_tokens = _tokens(content)
        return {
            "id": "offline-" + hashlib.sha256(content.encode()).hexdigest()[:16],
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
