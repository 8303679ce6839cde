"""Scripted answers for the judge cascade's tests: the reasoning judge's verdicts and the first
judge's verdicts with the token log-probabilities of their booleans, per candidate row (found by
its Q+ block), through the local OpenAI-compatible server (tests/openai_server.py).

    script = CascadeScript()
    script.judge_fails["some query"] = "hn1_fits"                 # the reasoning judge fails one check
    script.first["some query"] = {"hn1_fits": (False, 0.95)}      # the first judge: (passed, p of its token)
    FakeOpenAIServer(responder=script.respond)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from openai_server import data_block, logprob_tokens
from pipeline.generation.models import CHECKS
from test_llm_stages import responder as stage_responder


def first_answer(verdicts: dict[str, tuple[bool, float]], field_confidence: float | None = None) -> dict:
    """The first judge's JSON answer and its logprobs: every check passes with certainty unless
    `verdicts` says otherwise ((passed, probability of the boolean's token)). The explicit
    `confidence` field says `field_confidence` when given (to tell which one the stage used)."""
    parts, logprob_at = ["{"], {}
    for i, check in enumerate(CHECKS):
        passed, p = verdicts.get(check, (True, 1.0))
        parts.append(("" if i == 0 else ", ") + json.dumps(check) + ': {"reason": '
                     + json.dumps(f"first: {check}") + ', "passed": ')
        logprob_at[len("".join(parts))] = math.log(p)
        conf = p if field_confidence is None else field_confidence
        parts.append(("true" if passed else "false") + f', "confidence": {conf}}}')
    parts.append("}")
    content = "".join(parts)
    return {"content": content, "logprobs": logprob_tokens(content, logprob_at)}


@dataclass
class CascadeScript:
    judge_fails: dict[str, str] = field(default_factory=dict)  # Q+ -> the check the reasoning judge fails
    first: dict[str, dict[str, tuple[bool, float]]] = field(default_factory=dict)  # Q+ -> first judge's failures
    field_confidence: float | None = None

    def respond(self, body):
        name = body["response_format"]["json_schema"]["name"]
        user = body["messages"][1]["content"]
        if name == "JudgeVerdicts":
            fail = self.judge_fails.get(data_block(user, "Q+"))
            return json.dumps({c: {"passed": c != fail, "reason": f"judge: {c}"} for c in CHECKS})
        if name == "FirstJudgeVerdicts":
            return first_answer(self.first.get(data_block(user, "Q+"), {}), self.field_confidence)
        return stage_responder(body)


def judge_queries(server) -> list[str]:
    """The Q+ of every reasoning-judge request the server received."""
    return [data_block(r.body["messages"][1]["content"], "Q+") for r in server.chat_requests()
            if r.body["response_format"]["json_schema"]["name"] == "JudgeVerdicts"]


def _u(text: str, salt: str) -> float:
    import hashlib

    return int(hashlib.sha256(f"{salt}\x1f{text}".encode()).hexdigest()[:12], 16) / 16**12


@dataclass
class PaperScript:
    """The paper's setting, by a hash of each row's Q+: the reasoning judge accepts `accept` of the
    rows (InF-IR kept 38,759 of ~100k); the first judge fails `catch` of the rows the judge rejects,
    and `false_reject` of those it accepts, on one check with probability `sure`; it also fails
    `unsure_bad` / `unsure_good` of the others with probability 0.6 (below any sensible threshold)."""

    accept: float = 0.38759
    catch: float = 0.70
    false_reject: float = 0.03
    sure: float = 0.97
    unsure_bad: float = 0.15
    unsure_good: float = 0.10

    def good(self, q: str) -> bool:
        return _u(q, "judge") < self.accept

    def respond(self, body):
        name = body["response_format"]["json_schema"]["name"]
        if name not in ("JudgeVerdicts", "FirstJudgeVerdicts"):
            return stage_responder(body)
        q = data_block(body["messages"][1]["content"], "Q+")
        check = CHECKS[int(_u(q, "check") * len(CHECKS))]
        good = self.good(q)
        if name == "JudgeVerdicts":
            return json.dumps({c: {"passed": good or c != check, "reason": f"judge: {c}"} for c in CHECKS})
        u = _u(q, "first")
        sure, unsure = (self.false_reject, self.unsure_good) if good else (self.catch, self.unsure_bad)
        verdicts = {check: (False, self.sure)} if u < sure else {check: (False, 0.6)} if u < sure + unsure else {}
        return first_answer(verdicts)
