"""A local OpenAI-compatible server that answers and bills like a real run: answers of the lengths
the prompts expect, hidden reasoning tokens on the judge (lognormal, median 2,000, about 2,060 on
average: o3-mini at medium effort reports 1-3k), and about 60% of candidates accepted.

The reasoning mean is deliberately NOT the price file's expectation for o3-mini at medium effort
(1,600, `pipeline/llm/prices.toml`): an estimate checked against this bill shows that assumption's
error apart from the rest (tests/runner/test_budget.py)."""

from __future__ import annotations

import hashlib
import json

from openai_server import FakeOpenAIServer, data_block, seeded_reasoning
from pipeline.generation.models import CHECKS

#: lognormal(median, sigma) hidden reasoning tokens per judge answer, clipped to [600, 3,200] (below
#: verify.max_completion_tokens = 4,000 less the visible answer): mean ~2,060.
REASONING_MEDIAN, REASONING_SIGMA, REASONING_LOW, REASONING_HIGH = 2000, 0.25, 600, 3200


def _h(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8], 16)


def _words(seed: int, n: int) -> str:
    vocab = ("detail", "season", "method", "region", "budget", "history", "process", "safety", "example", "record",
             "measure", "result", "factor", "source", "option", "period", "design", "effect", "market", "policy")
    return " ".join(vocab[(seed >> (i % 24)) % len(vocab)] if i % 3 else vocab[(seed + i) % len(vocab)] for i in range(n))


reasoning_tokens = seeded_reasoning(REASONING_MEDIAN, REASONING_SIGMA, low=REASONING_LOW, high=REASONING_HIGH)


def realistic(body: dict) -> str:
    name = body["response_format"]["json_schema"]["name"]
    user = body["messages"][-1]["content"]
    if name == "GeneratedInstruction":
        q = data_block(user, "query")
        extra = _words(_h(q, "i"), 30 + _h(q) % 20)
        return json.dumps({"instruction": f"Only passages about {q} that cover the {extra}, stated plainly.",
                           "kind": "aspect"})
    if name == "PoisonedPair":
        q, i = data_block(user, "query"), data_block(user, "instruction")
        hn1 = f"A guide on {q}: " + _words(_h(q, "1"), 80 + _h(q) % 30) + "."
        hn2 = f"Notes on {q} abroad, for travellers: " + _words(_h(q, "2"), 85 + _h(q) % 30) + "."
        ineg = i.replace("stated plainly", "written for experts only, with no plain summary at all")
        return json.dumps({"instruction_negative": ineg,
                           "hard_negative_document_1": hn1, "query_negative": f"{q} abroad",
                           "hard_negative_document_2": hn2})
    if name == "JudgeVerdicts":
        q = data_block(user, "Q+")
        fail = CHECKS[_h(q) % len(CHECKS)] if _h(q, "f") % 10 < 4 else None  # ~40% rejected
        reason = lambda c: f"{c}: " + _words(_h(q, c), 45 + _h(q, c, "n") % 20)  # noqa: E731
        return json.dumps({c: {"passed": c != fail, "reason": reason(c)} for c in CHECKS})
    raise AssertionError(f"unexpected schema {name}")


def billing_server(**kw) -> FakeOpenAIServer:
    return FakeOpenAIServer(responder=realistic, reasoning_tokens=reasoning_tokens, **kw)
