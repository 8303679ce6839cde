"""Throughput of the LLM client against a local OpenAI-compatible server.

Compares, in one run and against one server process (fixed latency per request):
  (a) bare `AsyncOpenAI` (max_retries=0) behind an asyncio.Semaphore(concurrency)
  (b) our `LLMClient` (prompt rendering, cache key, SQLite cache with an empty cache in a tmp
      dir and one commit per response, limiter, retry loop, parsing + validation)
and prints a markdown table with requests/second of both and the ratio (target >= 0.9).
The ideal is concurrency / latency (320 req/s at 32 and 100 ms).

    python bench/bench_llm_client.py [--n 2000] [--latency 0.1] [--concurrency 32] [--out FILE]

The server runs in a subprocess (so it does not share the GIL with the clients), asyncio-based by
default (`--server thread` for the ThreadingHTTPServer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydantic import BaseModel  # noqa: E402

from pipeline.llm import LLMSettings, LLMTask, Prompt, default_params, make_client  # noqa: E402
from pipeline.llm.openai_api.request import build_body  # noqa: E402

PROMPT = Prompt.from_text(
    "bench",
    "### system\nYou write one instruction that narrows a search query.\n"
    "### user\nQuery {{ i }}: {{ query }}\n{{ passage | block('passage') }}\nAnswer in JSON.",
)
PASSAGE = "The quick brown fox jumps over the lazy dog. " * 20


class Answer(BaseModel):
    instruction: str
    score: int


def make_tasks(n: int, model: str) -> list[LLMTask]:
    params = default_params(model, temperature=0.0, max_tokens=200)
    return [
        LLMTask(str(i), PROMPT, {"i": i, "query": f"what is item {i}", "passage": PASSAGE}, Answer, model, params)
        for i in range(n)
    ]


def start_server(latency: float, kind: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "openai_server.py"), "--latency", str(latency), "--server", kind,
         "--no-record"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def bench_bare(base_url: str, n: int, concurrency: int, model: str) -> float:
    from openai import AsyncOpenAI

    bodies = [build_body(t) for t in make_tasks(n, model)]  # same requests as (b), pre-rendered
    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench-not-a-key", max_retries=0, timeout=60)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(body: dict) -> None:
        nonlocal ok
        async with sem:
            r = await client.chat.completions.create(**body)
            Answer.model_validate_json(r.choices[0].message.content)
            ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    dt = time.perf_counter() - t0
    await client.close()
    assert ok == n, ok
    return n / dt


async def bench_ours(base_url: str, n: int, concurrency: int, model: str, cache_dir: str) -> tuple[float, dict]:
    os.environ["INFIR_BENCH_KEY"] = "sk-bench-not-a-key"
    settings = LLMSettings(
        backend="openai", base_url=base_url, api_key_env="INFIR_BENCH_KEY", concurrency=concurrency,
        cache_path=Path(cache_dir) / "llm.sqlite3",
    )
    client = make_client(settings)
    tasks = make_tasks(n, model)
    t0 = time.perf_counter()
    results = await client.arun(tasks)
    dt = time.perf_counter() - t0
    await client.aclose_backend()
    stats = client.cache.stats() if client.cache else {}
    client.close()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert client.totals.http_calls == n, client.totals
    return n / dt, stats


def main() -> None:
    ap = argparse.ArgumentParser(description="LLM client throughput vs bare AsyncOpenAI")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--server", choices=("asyncio", "thread"), default="asyncio")
    ap.add_argument("--repeat", type=int, default=3, help="alternate (a)/(b) this many times; medians reported")
    ap.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = ap.parse_args()

    proc, base_url = start_server(args.latency, args.server)
    bare: list[float] = []
    ours: list[float] = []
    stats: dict = {}
    try:
        for i in range(args.repeat):
            # Alternate the order (a b, b a, ...) so that drift on a shared machine hits both.
            for which in ("ab" if i % 2 == 0 else "ba"):
                if which == "a":
                    bare.append(asyncio.run(bench_bare(base_url, args.n, args.concurrency, args.model)))
                else:
                    with tempfile.TemporaryDirectory() as d:
                        rps, stats = asyncio.run(bench_ours(base_url, args.n, args.concurrency, args.model, d))
                        ours.append(rps)
    finally:
        proc.terminate()
        proc.wait(10)

    a, b = statistics.median(bare), statistics.median(ours)
    ideal = args.concurrency / args.latency if args.latency > 0 else float("inf")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(
        [
            f"LLM client throughput: {args.n} requests, {args.latency * 1000:g} ms server latency, "
            f"concurrency {args.concurrency}, {args.server} server in a subprocess; "
            f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"load average {load:.1f}; median of {args.repeat} alternating runs; ideal {ideal:.0f} req/s",
            "",
            "| client | req/s (median) | runs | vs ideal |",
            "|---|---:|---|---:|",
            f"| (a) bare AsyncOpenAI + semaphore | {a:.1f} | {', '.join(f'{x:.0f}' for x in bare)} | {a / ideal:.2f} |",
            f"| (b) infir LLMClient, empty SQLite cache | {b:.1f} | {', '.join(f'{x:.0f}' for x in ours)} | {b / ideal:.2f} |",
            f"| **ratio (b)/(a)** | **{b / a:.2f}** | | |",
            "",
            f"cache after (b): {stats.get('entries')} entries, {stats.get('size_bytes', 0) / 1e6:.1f} MB",
        ]
    )
    print(table)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
