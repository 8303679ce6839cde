"""Local vs Ray executor on the same work, as ratios measured in one command:

1. LLM stages: `infir build --until verify` (generate -> mine -> filter -> verify) on the bundled
   sample against bench/llm_server.py at `--latency` (200 ms), `--concurrency` 32, once with
   `--executor local` and once with `--executor ray` (a local Ray started by the command: its
   start-up is inside the Ray time and also shown apart). Rows/s of each and the ratio.
2. Dense encoding of `--passages` synthetic passages with the bundled MiniLM: the local encoder
   (`dense.encode`, the index build's 16,384-passage groups) vs Ray Data (`retrieval.ray_encode`,
   one model per actor). Passages/s of each and the ratio. The synthetic passages' made-up words
   cost ~3 tokens each (222 tokens a passage on average), so both encoders truncate at
   `--max-seq-length` 82 tokens, the mean length in MiniLM tokens of the MS MARCO sample's passages
   (../shared/data/msmarco-dev-sample, 1,743 passages: mean 82, median 80): 100k of them cost about
   what 100k MS MARCO passages cost.

On a machine with C cores Ray can only spread the same C cores over more processes: the LLM path
is bound by the endpoint's latency (both executors keep `llm.concurrency` requests in flight), and
the encoder by the cores, so a ratio near 1 (minus Ray's overhead) is the honest result on one
small machine; the gain is from adding nodes (see README, "Running on a cluster").

    python bench/bench_ray.py [--latency 0.2] [--concurrency 32] [--passages 100000] [--max-seq-length 82]
                              [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import llm_server  # noqa: E402

KEY_ENV = "INFIR_BENCH_KEY"


def infir(*args: str, cwd: Path) -> float:
    env = {**os.environ, KEY_ENV: "sk-bench-not-a-key", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def llm_stages(latency: float, concurrency: int, work: Path) -> dict:
    proc, url = llm_server.start(latency)
    try:
        common = ["--config", str(REPO / "configs/sample.toml"), "--set", f"source.path={REPO / 'data/sample'}",
                  "--set", f"llm.api_key_env={KEY_ENV}", "--set", f"llm.base_url={url}",
                  *[a for s in ("generate", "mine", "filter", "verify") for a in ("--set", f"{s}.shard_rows=40")]]
        out = {}
        for executor in ("local", "ray"):
            run = ["--run", executor, "--set", f"llm.cache_path=.cache/{executor}.sqlite3"]
            infir("source", *common, *run, cwd=work)
            secs = infir("build", *common, *run, "--until", "verify", "--executor", executor,
                         "--backend", "openai", "--concurrency", str(concurrency), cwd=work)
            import json

            rows = json.loads((work / "runs" / executor / "verify" / "_SUCCESS.json").read_text())["rows"]
            out[executor] = (rows, secs)
    finally:
        llm_server.stop(proc)
    return out


def ray_start_seconds() -> float:
    code = "import time,ray; t=time.perf_counter(); ray.init(include_dashboard=False); print(time.perf_counter()-t)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def dense(passages: int, max_seq_length: int, work: Path) -> dict:
    import numpy as np
    import ray
    from synthetic import ensure_collection

    from pipeline.retrieval.collection import index_text, iter_collection
    from pipeline.retrieval.dense import encode, load_model
    from pipeline.retrieval.ray_encode import encode_collection
    from pipeline.retrieval.types import MiningSettings

    paths, _ = ensure_collection(work / "coll", passages)
    settings = MiningSettings(method="dense", max_seq_length=max_seq_length)
    t0 = time.perf_counter()
    model = load_model(None, "cpu", max_seq_length)
    texts: list[str] = []
    n = 0
    for _, title, text in iter_collection(paths):
        texts += index_text(title, text)
        while len(texts) >= 16384:
            n += len(encode(model, texts[:16384], "document", settings.batch_size))
            texts = texts[16384:]
    n += len(encode(model, texts, "document", settings.batch_size)) if texts else 0
    local = time.perf_counter() - t0
    ray.init(include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    encode_collection(paths, work / "index", settings, "bench" + "0" * 11)
    on_ray = time.perf_counter() - t0
    ray.shutdown()
    assert n == passages, (n, passages)
    del np
    return {"local": (n, local), "ray": (n, on_ray)}


def actor_round_trips(work: Path, n: int = 500) -> dict:
    """Milliseconds per call of what a worker's client asks the run's actors for each request: the
    limiter's acquire (no limit binding) and the ledger's reserve + settle (SQLite on this node)."""
    import ray

    from pipeline.runner.executors.ray_limits import RemoteLedger, RemoteLimiter, SharedLedger, SharedLimits

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        limits = RemoteLimiter(ray.remote(num_cpus=0)(SharedLimits).remote(1e9, None))
        ledger = RemoteLedger(ray.remote(num_cpus=0)(SharedLedger).remote(str(work / "spend.sqlite3"), 1e9, "bench"),
                              "bench:0", 1e9)
        import asyncio

        async def acquire_n() -> None:
            for _ in range(n):
                await limits.acquire(100)

        asyncio.run(acquire_n())  # warm-up: the actor's first calls start its process
        t0 = time.perf_counter()
        asyncio.run(acquire_n())
        acquire = (time.perf_counter() - t0) / n
        ledger.settle(ledger.reserve(0.001), 0.001)
        t0 = time.perf_counter()
        for _ in range(n):
            ledger.settle(ledger.reserve(0.001), 0.001)
        pair = (time.perf_counter() - t0) / n
    finally:
        ray.shutdown()
    return {"acquire_ms": acquire * 1000, "reserve_settle_ms": pair * 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--max-seq-length", type=int, default=82, help="MiniLM tokens per passage (MS MARCO's mean)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        llm = llm_stages(args.latency, args.concurrency, work)
        start = ray_start_seconds()
        enc = dense(args.passages, args.max_seq_length, work)
        trips = actor_round_trips(work)
    (lr, ls), (rr, rs) = llm["local"], llm["ray"]
    (ln, lt), (rn, rt) = enc["local"], enc["ray"]
    lines = [
        f"Machine: {os.cpu_count()} cores. A local Ray starts in {start:.1f} s here (inside the Ray times below).\n",
        "| work | local | Ray | Ray / local |",
        "|---|---|---|---|",
        f"| LLM stages, {lr} rows at {args.latency * 1000:.0f} ms, concurrency {args.concurrency} "
        f"| {lr / ls:.2f} rows/s ({ls:.1f} s) | {rr / rs:.2f} rows/s ({rs:.1f} s) | {(rr / rs) / (lr / ls):.2f} |",
        f"| dense encoding, {ln:,} passages of {args.max_seq_length} tokens (MiniLM, CPU) | {ln / lt:.0f} passages/s ({lt:.0f} s) "
        f"| {rn / rt:.0f} passages/s ({rt:.0f} s) | {(rn / rt) / (ln / lt):.2f} |",
        "",
        f"Per request, a worker's client waits on the run's actors: limiter acquire {trips['acquire_ms']:.2f} ms, "
        f"ledger reserve + settle {trips['reserve_settle_ms']:.2f} ms (one caller, 500 sequential calls each, "
        "local Ray; the ledger commits to SQLite on the driver's node). Each actor serves one call at a time: "
        "that, not the nodes, is what bounds one run's request rate.",
        "",
        f"On {os.cpu_count()} cores Ray spreads the same cores over more processes: the LLM stages are bound by "
        "the endpoint (both executors keep `llm.concurrency` requests in flight) and pay Ray's start-up and task "
        "overhead; the encoder is bound by the cores and pays actor start-up and Arrow transfers. What Ray buys "
        "is nodes, not speed on one machine.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
