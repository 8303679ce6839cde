"""The test server (tests/openai_server.py) as a benchmark endpoint, with a responder whose answers
look like real ones.

Why not the server's default responder: its fake strings are a few tokens long (so the token counts
and costs would be far too low), and its random booleans make the judge accept about 1 row in 512.
This responder answers each of the pipeline's three schemas with text of realistic length
(instruction ~25 words, hard-negative passages ~70 words, one reason sentence per check), varied
enough that the verify pre-filters pass, and judges a deterministic `accept_rate` of the rows as
passing every check (the others fail one check). Reasoning models (o1/o3/o4/gpt-5) additionally
report `reasoning_tokens` hidden tokens, as the real API does (billed as completion tokens).

    python bench/llm_server.py --latency 0.2 [--accept-rate 0.38759] [--reasoning-tokens 1500]
    -> prints "READY <base_url>"; GET <base_url>/bench/count returns {"chat": n} (requests so far)

The service's behaviour (tests/openai_limits.py), for rehearsing a run against OpenAI's limits:
    --limit gpt-4o-mini=500,200000 --limit o3-mini=500,200000   per-model RPM,TPM (real headers, 429s)
    --time-scale 60            one server minute = 1 real second (latencies divided, headers real time)
    --reasoning-latency 40,0.67 --chat-latency 1.5,0.5          lognormal seconds (server time)
    --error-rate 0.002         share of admitted requests answered 500/503
    --limit-retry-after        send Retry-After with a 429 (the service mostly sends none)
    --batch-queue-tokens gpt-4o-mini=2000000 --batch-seconds 5  the Batch API's enqueued-token limit
GET <base_url>/bench/stats returns {"time_scale", "models": {model: {requests, answered,
rate_limited, server_errors, tokens_asked, prompt_tokens, completion_tokens, cached_tokens,
reasoning_tokens}}, "batch": {"models": {model: {requests, prompt_tokens, ...}}, "batch_creations",
"token_limit_failures", "batch_queue_peak"}}: the online counters (tokens billed are the usage of
the answers sent, reasoning tokens included) and the Batch API's (usage of every line answered).

The server runs in its own process (asyncio mode) so that it never shares a GIL with the pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import html
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


def _block(text: str, label: str) -> str:
    """The content of the prompt's `<data label="LABEL">` block (empty if it has none)."""
    tag = f'<data label="{label}">'
    if tag not in text:
        return ""
    start = text.index(tag) + len(tag)
    end = text.find("</data>", start)
    return html.unescape(text[start:end if end >= 0 else None]).strip()


def _edit(rng: random.Random, text: str, changes: int) -> str:
    """`text` with `changes` words replaced (a minimal edit); a few fresh words if it is empty."""
    words = text.split()
    if not words:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 8)))
    for i in rng.sample(range(len(words)), min(changes, len(words))):
        words[i] = rng.choice([w for w in _WORDS if w != words[i].lower()])
    return " ".join(words)


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
            # I- and Q- as the prompt asks: minimal edits of I+ and Q+ (a few words swapped), so the
            # filter stage's minimal-edit checks pass as they would for a real model's answer.
            user = next((m.get("content") or "" for m in body.get("messages") or [] if m.get("role") == "user"), "")
            return json.dumps({
                "instruction_negative": _edit(rng, _block(user, "instruction"), 3),
                "hard_negative_document_1": _passage(rng, rng.randint(55, 85)),
                "query_negative": _edit(rng, _block(user, "query"), 1),
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
        """Counts the Batch API's billing as the service's tally counts the online answers'."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.batch_billed: dict[str, dict[str, int]] = {}

        def _finish(self, b, cancelled=False):
            super()._finish(b, cancelled)
            f = self.files.get(b.get("output_file_id") or "")
            for line in (f["_content"].decode("utf-8").splitlines() if f else ()):
                resp = (json.loads(line).get("response") or {})
                usage = (resp.get("body") or {}).get("usage") if resp.get("status_code") == 200 else None
                if not usage:
                    continue
                t = self.batch_billed.setdefault(str(resp["body"].get("model")), dict.fromkeys(
                    ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"), 0))
                t["requests"] += 1
                t["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                t["completion_tokens"] += int(usage.get("completion_tokens") or 0)
                t["cached_tokens"] += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
                t["reasoning_tokens"] += int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)

    def count(server, rec):
        return Reply(200, {"chat": sum(n for p, n in server.counts.items() if "chat/completions" in p)})

    def stats(server, rec):
        out = server.service.stats() if server.service is not None else {"models": {}}
        with server._batch_lock:
            out["batch"] = {"models": {m: dict(t) for m, t in server.batch_billed.items()},
                            "batch_creations": server.batch_creations,
                            "token_limit_failures": getattr(server, "token_limit_failures", 0),
                            "batch_queue_peak": dict(getattr(server, "batch_queue_peak", {}))}
        return Reply(200, out)

    return BenchServer, count, stats


def start(latency: float, accept_rate: float = DEFAULT_ACCEPT, reasoning_tokens: int = 0,
          extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server in a subprocess; returns (process, base_url). `extra`: more options
    (`--limit`, `--time-scale`, ...: the module docstring)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--latency", str(latency), "--accept-rate", str(accept_rate),
         "--reasoning-tokens", str(reasoning_tokens), *(extra or [])],
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


def stats(base_url: str) -> dict[str, Any]:
    """The server's counters (the module docstring)."""
    with urllib.request.urlopen(f"{base_url}/bench/stats", timeout=30) as r:
        return json.loads(r.read())


def main() -> None:
    cls, count, stats_route = _server_class()
    from openai_limits import add_arguments, service_from_args  # type: ignore[import-not-found]

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--accept-rate", type=float, default=DEFAULT_ACCEPT, help="fraction of judged rows accepted")
    ap.add_argument("--reasoning-tokens", type=int, default=0, help="hidden tokens per reasoning-model call")
    ap.add_argument("--batch-queue-tokens", action="append", default=[], metavar="MODEL=TOKENS",
                    help="the Batch API's enqueued-token limit per model (repeatable; '*=N' alone: every model)")
    ap.add_argument("--batch-seconds", type=float, default=0.0, help="a batch's least time in progress")
    add_arguments(ap)
    a = ap.parse_args()
    queue = {m: int(t) for m, _, t in (spec.partition("=") for spec in a.batch_queue_tokens)}
    queue_tokens = queue["*"] if set(queue) == {"*"} else (queue or None)
    # The server's own reasoning_tokens option bills them (answer(), so batch lines too) as the API does.
    srv = cls(responder=make_responder(a.accept_rate), latency=a.latency, port=a.port, server="asyncio",
              record=False, reasoning_tokens=a.reasoning_tokens, service=service_from_args(a),
              batch_seconds=a.batch_seconds, batch_queue_tokens=queue_tokens)
    srv.routes[("GET", "/v1/bench/count")] = count
    srv.routes[("GET", "/v1/bench/stats")] = stats_route
    srv.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {srv.base_url}", flush=True)
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
