"""Shared parts of tests/test_reliability_*.py: a crafted responder for the local OpenAI-compatible
server, the `infir` command line those tests run, and kill -9 helpers.

The responder answers like a well-behaved model: instructions, poisoned pairs and verdicts that the
pre-filters let through, with the judge failing one check for about one row in five, so that a run
has accepted and rejected rows and the release is not empty.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
for p in (str(TESTS), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

from pipeline.declaration import PIPELINE
from pipeline.runner.shape import RowStage
from openai_server import data_block  # noqa: E402
from pipeline.generation.models import CHECKS  # noqa: E402

KEY_ENV = "INFIR_RELIABILITY_KEY"
LLM_STAGES = ("generate", "mine", "verify")


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def responder(body: dict) -> str:
    name = body["response_format"]["json_schema"]["name"]
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if name == "GeneratedInstruction":
        q = data_block(user, "query")
        return json.dumps({"instruction": f"I want the historical background of {q}, nothing about prices.",
                           "kind": "aspect"})
    if name == "PoisonedPair":
        q = data_block(user, "query")
        # I- and Q- are minimal edits of I+ and Q+, and the negatives passage-like, as the filter
        # stage requires of a real model's answers.
        return json.dumps({
            "instruction_negative": f"I want the future outlook of {q}, nothing about prices.",
            "hard_negative_document_1": f"Forecasts say {q} will change a lot over the next ten years, as experts expect "
                                        "new rules, new technology and new habits to reshape it across most regions soon.",
            "query_negative": f"{q} abroad",
            "hard_negative_document_2": f"Abroad, {q} has a long history that is told here in detail, from its early days "
                                        "through the many local customs and changes that shaped it in each country.",
        })
    if name == "JudgeVerdicts":
        q = data_block(user, "Q+")
        fail = CHECKS[_h(q) % len(CHECKS)] if _h(q) % 5 == 0 else None
        return json.dumps({c: {"passed": c != fail, "reason": f"crafted: {c}"} for c in CHECKS})
    raise AssertionError(f"unexpected schema {name}")


def query_of(body: dict) -> str:
    """The Q+ a request is about (every prompt shows it in a data block), unescaped."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    label = "Q+" if stage_of(body) == "verify" else "query"
    return html.unescape(data_block(user, label))


def stage_of(body: dict) -> str:
    return {"GeneratedInstruction": "generate", "PoisonedPair": "mine", "JudgeVerdicts": "verify"}[
        body["response_format"]["json_schema"]["name"]
    ]


def infir_args(stage: str, base_url: str, msmarco: Path, *, queries: int = 120, shard_rows: int = 10,
               concurrency: int = 4, extra: tuple[str, ...] = ()) -> list[str]:
    """`infir <stage>` on a sample of the MS MARCO data against the local server, with small shards
    so that a kill lands between and inside shards."""
    sets = {
        "source.path": str(msmarco),
        "source.sample_queries": queries,
        "source.shard_rows": 25,
        "source.collection_shard_rows": 200,
        "llm.backend": "openai",
        "llm.base_url": base_url,
        "llm.api_key_env": KEY_ENV,
        "llm.concurrency": concurrency,
        "llm.backoff_base_s": 0.01,
        "llm.backoff_max_s": 0.05,
        "llm.cache_path": ".cache/llm.sqlite3",
        # every row stage of the declaration (LLM stages and the deterministic ones between them)
        **{f"{s.section}.shard_rows": shard_rows for s in PIPELINE if isinstance(s, RowStage)},
        "train.batch_size": 8,
        "train.max_rows": 16,
        "train.max_seq_length": 64,
        "train.ablate_mined_negatives": False,
    }
    args = [stage]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}"]
    return args + list(extra)


def infir_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def child_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(infir_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL; True if the process was still running (the kill really interrupted it)."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def settle(server, quiet_s: float = 0.2) -> int:
    """The server's request count once requests a dead client left in socket buffers are read."""
    last = -1
    while server.count != last:
        last = server.count
        time.sleep(quiet_s)
    return last


def tree_bytes(root: Path, pattern: str = "*") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob(pattern)) if p.is_file()}
