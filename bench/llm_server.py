"""The test server (tests/openai_server.py) as a benchmark endpoint, with a responder whose answers
look like real ones.

Why not the server's default responder: its fake strings are a few tokens long (so the token counts
and costs would be far too low), and its random booleans make the judge accept about 1 row in 512.
This responder answers each of the pipeline's three schemas with text of realistic length
(instruction ~25 words, hard-negative passages ~70 words, one reason sentence per check), varied
enough that the verify pre-filters pass, and judges a deterministic `accept_rate` of the rows as
passing every check (the others fail one check). Reasoning models (o1/o3/o4/gpt-5) additionally
report `reasoning_tokens` hidden tokens, as the real API does (billed as completion tokens), since
the test server does not model them.

    python bench/llm_server.py --latency 0.2 [--accept-rate 0.38759] [--reasoning-tokens 1500]
    -> prints "READY <base_url>"; GET <base_url>/bench/count returns {"chat": n} (requests so far)

The server runs in its own process (asyncio mode) so that it never shares a GIL with the pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Content words for the fake answers; a fixed list keeps every run byte-identical.
_WORDS = (
    "method results include specific details explain history focus practical examples describe cost "
    "only recent studies mention safety steps compare regional differences exclude opinions list "
    "symptoms treatment timeline numbers official sources definition process materials benefits risks "
    "average price measured annual season local climate typical range early stage modern version "
    "common causes primary reason legal requirement medical advice technical terms simple language "
    "background context effects water energy growth small business children adults students "
    "government science industry market travel weather health software hardware education"
).split()
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
# The paper's acceptance: 38,759 rows kept of ~100k candidates.
DEFAULT_ACCEPT = 0.38759


def _rng(body: dict[str, Any]) -> random.Random:
    msgs = body.get("messages") or []
    user = next((m.get("content") for m in msgs if m.get("role") == "user"), "")
    return random.Random(hashlib.sha256(f"{body.get('model')}\x1f{user}".encode()).digest())


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def _passage(rng: random.Random, n: int) -> str:
    parts, left = [], n
    while left > 0:
        k = min(left, rng.randint(10, 18))
        parts.append(_sentence(rng, k))
        left -= k
    return " ".join(parts)


def make_responder(accept_rate: float):
    def respond(body: dict[str, Any]) -> str | None:
        rf = (body.get("response_format") or {}).get("json_schema") or {}
        name, schema = rf.get("name"), rf.get("schema") or {}
        props = schema.get("properties") or {}
        rng = _rng(body)
        if name == "GeneratedInstruction":
            return json.dumps({"instruction": _sentence(rng, rng.randint(18, 32)),
                               "kind": rng.choice(["aspect", "constraint", "format", "exclusion"])})
        if name == "PoisonedPair":
            return json.dumps({
                "instruction_negative": _sentence(rng, rng.randint(18, 32)),
                "hard_negative_document_1": _passage(rng, rng.randint(55, 85)),
                "query_negative": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 8))),
                "hard_negative_document_2": _passage(rng, rng.randint(55, 85)),
            })
        if name == "JudgeVerdicts":
            accept = rng.random() < accept_rate
            fail = None if accept else rng.choice(sorted(props))
            return json.dumps({c: {"passed": c != fail, "reason": _sentence(rng, rng.randint(12, 20))}
                               for c in props})
        return None  # anything else: the server's default (schema-valid) answer

    return respond


def _server_class():
    sys.path.insert(0, str(REPO / "tests"))
    from openai_server import FakeOpenAIServer, Reply  # type: ignore[import-not-found]

    class BenchServer(FakeOpenAIServer):
        reasoning_tokens = 0

        def chat_completions(self, rec):
            reply = super().chat_completions(rec)
            usage = (reply.body or {}).get("usage") if isinstance(reply.body, dict) else None
            model = str((rec.body or {}).get("model") or "")
            if usage and self.reasoning_tokens and model.startswith(_REASONING_PREFIXES):
                usage["completion_tokens"] += self.reasoning_tokens
                usage["total_tokens"] += self.reasoning_tokens
                usage["completion_tokens_details"]["reasoning_tokens"] = self.reasoning_tokens
            return reply

    def count(server, rec):
        return Reply(200, {"chat": sum(n for p, n in server.counts.items() if "chat/completions" in p)})

    return BenchServer, count, FakeOpenAIServer


def start(latency: float, accept_rate: float = DEFAULT_ACCEPT, reasoning_tokens: int = 0) -> tuple[subprocess.Popen, str]:
    """Start the server in a subprocess; returns (process, base_url)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--latency", str(latency), "--accept-rate", str(accept_rate),
         "--reasoning-tokens", str(reasoning_tokens)],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"bench server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def chat_count(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/bench/count", timeout=10) as r:
        return int(json.loads(r.read())["chat"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--accept-rate", type=float, default=DEFAULT_ACCEPT, help="fraction of judged rows accepted")
    ap.add_argument("--reasoning-tokens", type=int, default=0, help="hidden tokens per reasoning-model call")
    a = ap.parse_args()
    cls, count, FakeOpenAIServer = _server_class()
    srv = cls(responder=make_responder(a.accept_rate), latency=a.latency, port=a.port, server="asyncio",
              record=False)
    srv.reasoning_tokens = a.reasoning_tokens
    # The routes hold the base class's function: point them at the override.
    for key, fn in list(srv.routes.items()):
        if fn is FakeOpenAIServer.chat_completions:
            srv.routes[key] = cls.chat_completions
    srv.routes[("GET", "/v1/bench/count")] = count
    srv.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {srv.base_url}", flush=True)
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
