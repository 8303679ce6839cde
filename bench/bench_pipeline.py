"""The pipeline against its physical limit, the LLM endpoint: generate -> mine -> verify on the MS MARCO
dev sample (../shared/data), driven through the `infir` CLI against bench/llm_server.py.

1. Throughput: `infir build --until verify` at `--latency` (200 ms) and `--concurrency` (32), as rows/s
   and as a fraction of the ideal concurrency / latency / calls-per-row (the endpoint's limit), twice:
   stage by stage (`--no-stream`: one stage after another, each one shard of 1,000 rows) and streamed
   (the default since issue #27: generate, mine, filter and verify at once, chunk k entering the next
   stage as soon as it is written; `--stream-shard-rows` rows a chunk for every row stage). Each build
   has a fresh server and a fresh LLM cache. Streamed, every LLM stage keeps its own `llm.concurrency`
   in flight, so the endpoint sees up to 3 x 32 requests at once: the ideal above (one stage's
   concurrency) is kept as the yardstick, and the report says so.
2. Overhead: the same at 0 ms latency: what the pipeline itself costs per 1,000 candidate rows
   (BM25 retrieval, prompts, HTTP client and server, Parquet, SQLite; no embedding: method = bm25),
   stage by stage and streamed.
3. Rerun: `infir build --until write` a second time on the finished run: LLM requests and seconds.
4. Cost: tokens per call from the rows' usage columns (`infir status`), priced with
   pipeline/llm/prices.toml, per 1,000 candidates and per 1,000 accepted rows, online and at batch
   prices, next to an estimate of the paper's setting.

Every `infir` command runs in its own process, the server in another (asyncio) process. The
source stage is run (and timed) before the clock starts: it is not part of the LLM path.

    python bench/bench_pipeline.py [--rows 1000] [--latency 0.2] [--concurrency 32] [--stream-shard-rows 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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
# InF-IR (paper): gpt-4o-mini generates and poisons, o3-mini validates; ~100k candidates, 38,759 kept.
PAPER_CANDIDATES = 100_000
PAPER_ACCEPTED = 38_759
STAGES = ("generate", "mine", "verify")
ROW_STAGES = ("generate", "mine", "filter", "verify")


def run_infir(args: list[str], log: Path) -> tuple[float, int]:
    """Run one `infir` command, its output appended to `log`; (wall seconds, interpreter start
    included; exit status)."""
    env = {**os.environ, KEY_ENV: "sk-bench-not-a-key", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ infir {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, stdout=f,
                           stderr=subprocess.STDOUT)
    return time.perf_counter() - t0, r.returncode


def infir(*args: str, log: Path) -> float:
    """Run one `infir` command; returns its wall seconds (interpreter start included)."""
    dt, returncode = run_infir(list(args), log)
    if returncode != 0:
        raise RuntimeError(f"infir {args[0]} failed (exit {returncode}); see {log}")
    return dt


def settings(work: Path, name: str, rows: int, base_url: str, concurrency: int, shard_rows: int | None = None) -> list[str]:
    sets = {
        "run.runs_dir": str(work / "runs"),
        "run.name": name,
        "source.sample_queries": rows,
        "llm.backend": "openai",
        "llm.base_url": base_url,
        "llm.api_key_env": KEY_ENV,
        "llm.concurrency": concurrency,
        "llm.cache_path": str(work / f"{name}.sqlite3"),
        "write.releases_dir": str(work / "releases"),
        "write.name": f"bench-{name}",
    }
    if shard_rows:
        sets.update({f"{s}.shard_rows": shard_rows for s in ROW_STAGES})
    out = ["--config", "configs/msmarco.toml"]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def stage_seconds(run: Path) -> dict[str, float]:
    out = {}
    for s in ("source",) + ROW_STAGES + ("write",):
        p = run / s / "_SUCCESS.json"
        if p.exists():
            out[s] = float(json.loads(p.read_text()).get("seconds") or 0.0)
    return out


def verify_hash(run: Path) -> str:
    """sha256 of verify's rows (accepted, then rejected, in shard order), to check streamed = stage by stage:
    the rows, not the files, since the streamed build cuts them into other shards (its shard_rows)."""
    import pyarrow.parquet as pq

    from pipeline.store import canonical_json

    h = hashlib.sha256()
    for part in ("accepted", "rejected"):
        for p in sorted((run / "verify" / part).glob("*.parquet")):
            for row in pq.read_table(p).to_pylist():  # row by row: the shard cuts differ
                h.update(canonical_json(row).encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def one_run(work: Path, name: str, rows: int, latency: float, concurrency: int, reasoning: int, log: Path,
            rerun: bool = False, stream: bool = False, shard_rows: int | None = None) -> dict:
    proc, url = llm_server.start(latency, reasoning_tokens=reasoning)
    try:
        args = settings(work, name, rows, url, concurrency, shard_rows)
        source_s = infir("source", *args, log=log)
        before = llm_server.chat_count(url)
        wall = infir("build", *args, "--until", "verify", *([] if stream else ["--no-stream"]), log=log)
        calls = llm_server.chat_count(url) - before
        res = {"name": name, "latency": latency, "source_s": source_s, "wall_s": wall, "calls": calls,
               "stream": stream, "shard_rows": shard_rows}
        run = work / "runs" / name
        verify = json.loads((run / "verify" / "_SUCCESS.json").read_text())["summary"]
        res.update(candidates=verify["candidates"], accepted=verify["accepted"], stages=stage_seconds(run),
                   verify_hash=verify_hash(run))
        if rerun:
            res["write_s"] = infir("write", *args, log=log)
            before = llm_server.chat_count(url)
            res["rerun_s"] = infir("build", *args, "--until", "write", log=log)
            res["rerun_calls"] = llm_server.chat_count(url) - before
        return res
    finally:
        llm_server.stop(proc)


def usage(run: Path) -> dict[str, dict]:
    """Per LLM stage: calls and tokens as the rows record them (what `infir status` shows)."""
    from pipeline.status import stage_states

    return {s["stage"]: s["llm"] for s in stage_states(run) if s["stage"] in STAGES}


def cost_table(run: Path, res: dict, reasoning: int) -> tuple[list[str], dict]:
    from pipeline.config import load_config
    from pipeline.llm.pricing import PriceTable

    cfg = load_config(REPO / "configs" / "msmarco.toml")
    models = {"generate": cfg.generate.model, "mine": cfg.mine.model, "verify": cfg.verify.model}
    prices = PriceTable.load()
    u = usage(run)
    n, acc = res["candidates"], res["accepted"]
    lines = [
        "| stage | model | calls | prompt tokens / call | completion tokens / call | $ / 1k candidates | "
        "$ / 1k candidates, batch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    total = total_batch = 0.0
    per_call = {}
    for s in STAGES:
        x = u[s]
        calls = x["calls"]
        pt, ct = x["prompt_tokens"] / calls, x["completion_tokens"] / calls
        usd = prices.cost(models[s], x["prompt_tokens"], x["completion_tokens"])
        usd_b = prices.cost(models[s], x["prompt_tokens"], x["completion_tokens"], batch=True)
        total, total_batch = total + usd, total_batch + usd_b
        per_call[s] = (models[s], pt, ct)
        lines.append(f"| {s} | {models[s]} | {calls:,} | {pt:,.0f} | {ct:,.0f} | {usd / n * 1000:.2f} | "
                     f"{usd_b / n * 1000:.2f} |")
    lines.append(f"| **all** | | | | | **{total / n * 1000:.2f}** | **{total_batch / n * 1000:.2f}** |")
    # The paper's setting: the same tokens per call (our prompts, MS MARCO passages), one call per
    # stage per candidate, ~100k candidates in, 38,759 rows out.
    per_cand = sum(prices.cost(m, pt, ct) for m, pt, ct in per_call.values())
    per_cand_b = sum(prices.cost(m, pt, ct, batch=True) for m, pt, ct in per_call.values())
    vm, vpt, vct = per_call["verify"]
    no_reason = prices.cost(vm, vpt, max(0.0, vct - reasoning)) - prices.cost(vm, vpt, vct)
    summary = [
        "",
        "| | candidates | accepted | $ total | $ / 1k accepted | $ / 1k accepted, batch |",
        "|---|---:|---:|---:|---:|---:|",
        f"| this run (test server) | {n:,} | {acc:,} | {total:.2f} | **{total / acc * 1000:.2f}** | "
        f"{total_batch / acc * 1000:.2f} |",
        f"| paper's setting (estimate) | {PAPER_CANDIDATES:,} | {PAPER_ACCEPTED:,} | {per_cand * PAPER_CANDIDATES:,.0f} | "
        f"{per_cand * PAPER_CANDIDATES / PAPER_ACCEPTED * 1000:.2f} | "
        f"{per_cand_b * PAPER_CANDIDATES / PAPER_ACCEPTED * 1000:.2f} |",
        "",
        f"The judge's {reasoning:,} reasoning tokens per call are an assumption (the test server reports what it "
        f"is told; o3-mini at medium effort): without them the judge costs "
        f"${-no_reason * 1000:.2f} less per 1k candidates. Acceptance here is the bench responder's "
        f"(it passes {llm_server.DEFAULT_ACCEPT:.2%} of judged rows, the paper's 38,759 / 100k, after our pre-filters). "
        f"Paper's setting: our measured tokens per call (MS MARCO passages, 8 retrieved passages shown to the "
        f"generate and poison prompts), one generate + one poison + one judge call per candidate, "
        f"{PAPER_CANDIDATES:,} candidates -> {PAPER_ACCEPTED:,} rows. Batch: x{prices.lookup('gpt-4o-mini').batch_discount:g} "
        f"(prices.toml batch_discount).",
    ]
    return lines + summary, {"usd_per_1k_accepted": total / acc * 1000, "usd_total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--reasoning-tokens", type=int, default=1500, help="o3-mini hidden tokens per judge call")
    ap.add_argument("--stream-shard-rows", type=int, default=100,
                    help="the streamed build's shard_rows for every row stage (its chunk: the streaming granularity)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "infir-bench-pipeline" / "e2e")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    log = a.work / "infir.log"

    slow = one_run(a.work, "latency", a.rows, a.latency, a.concurrency, a.reasoning_tokens, log)
    fast = one_run(a.work, "nolatency", a.rows, 0.0, a.concurrency, a.reasoning_tokens, log, rerun=True)
    sr = a.stream_shard_rows
    slow_s = one_run(a.work, "latency-streamed", a.rows, a.latency, a.concurrency, a.reasoning_tokens, log,
                     stream=True, shard_rows=sr)
    fast_s = one_run(a.work, "nolatency-streamed", a.rows, 0.0, a.concurrency, a.reasoning_tokens, log,
                     stream=True, shard_rows=sr)
    ach_s = slow_s["candidates"] / slow_s["wall_s"]
    same = slow_s["verify_hash"] == slow["verify_hash"] == fast["verify_hash"] == fast_s["verify_hash"]

    n = slow["candidates"]
    per_row = slow["calls"] / n
    ideal = a.concurrency / a.latency / per_row
    achieved = n / slow["wall_s"]
    llm_s = n * per_row / (a.concurrency / a.latency)
    over = fast["wall_s"] / fast["candidates"] * 1000
    st, fs = slow["stages"], fast["stages"]
    load = os.getloadavg()[0]
    md = [
        f"MS MARCO dev sample, {n:,} rows (source.sample_queries={a.rows}), BM25 mining, bench/llm_server.py "
        f"(asyncio, own process), concurrency {a.concurrency}; wall of `infir build --until verify` (a fresh "
        f"process: interpreter start, imports, BM25 index build, every stage) after `infir source`. "
        f"Load average at the end: {load:.1f} on {os.cpu_count()} cores.",
        "",
        "| | latency | LLM calls | calls / row | wall (s) | rows/s | ideal rows/s | of ideal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| throughput, stage by stage | {a.latency * 1000:g} ms | {slow['calls']:,} | {per_row:.2f} | {slow['wall_s']:.1f} | "
        f"{achieved:.1f} | {ideal:.1f} | **{achieved / ideal:.2f}** |",
        f"| throughput, streamed (shard_rows {sr}) | {a.latency * 1000:g} ms | {slow_s['calls']:,} | "
        f"{slow_s['calls'] / slow_s['candidates']:.2f} | {slow_s['wall_s']:.1f} | {ach_s:.1f} | {ideal:.1f} | "
        f"**{ach_s / ideal:.2f}** |",
        f"| overhead, stage by stage | 0 ms | {fast['calls']:,} | {fast['calls'] / fast['candidates']:.2f} | {fast['wall_s']:.1f} | "
        f"{fast['candidates'] / fast['wall_s']:.1f} | | |",
        f"| overhead, streamed (shard_rows {sr}) | 0 ms | {fast_s['calls']:,} | {fast_s['calls'] / fast_s['candidates']:.2f} | "
        f"{fast_s['wall_s']:.1f} | {fast_s['candidates'] / fast_s['wall_s']:.1f} | | |",
        "",
        f"- **Streamed** (`infir build` since issue #27; stage by stage is `--no-stream`): generate, mine, filter and "
        f"verify run at once, `--set <stage>.shard_rows={sr}` for each row stage (chunks of {sr} rows: the streaming "
        f"granularity; stage by stage keeps the default 1,000, one shard a stage), each LLM stage two chunks in flight. "
        f"Ideal is kept as defined above (one stage's concurrency, {a.concurrency}); streamed, each LLM stage has its own "
        f"`llm.concurrency` in flight, so the endpoint sees up to 3 x {a.concurrency} requests at once and the build's "
        f"physical limit is up to 3x that ideal. Verify's rows (accepted and rejected, in order) of the four builds identical: **{same}** "
        f"(`{slow_s['verify_hash']}`). Stage seconds streamed at {a.latency * 1000:g} ms / 0 ms (each from its own "
        f"start; they overlap): " + ", ".join(f"{s} {slow_s['stages'].get(s, 0):.1f} / {fast_s['stages'].get(s, 0):.1f}"
                                        for s in ROW_STAGES) + ".",
        f"- Ideal at {a.latency * 1000:g} ms: {llm_s:.2f} s of pure endpoint time for {n:,} rows "
        f"({a.concurrency} / {a.latency:g} s / {per_row:.2f} calls per row = {ideal:.1f} rows/s).",
        f"- **Pipeline overhead: {over:.1f} s per 1,000 candidate rows** (the 0 ms wall; target < 10 s). "
        f"Stage seconds stage by stage (from _SUCCESS.json) at {a.latency * 1000:g} ms / 0 ms: "
        + ", ".join(f"{s} {st.get(s, 0):.1f} / {fs.get(s, 0):.1f}" for s in ROW_STAGES)
        + f"; the rest of the wall is interpreter start, imports and config ({slow['wall_s'] - sum(st.get(s, 0) for s in ROW_STAGES):.1f} / "
        f"{fast['wall_s'] - sum(fs.get(s, 0) for s in ROW_STAGES):.1f} s). `infir source` (not in the wall): "
        f"{slow['source_s']:.1f} s.",
        f"- **Rerun**: a second `infir build --until write` of the finished run made **{fast['rerun_calls']} LLM "
        f"requests** in **{fast['rerun_s']:.1f} s** (first `infir write`: {fast['write_s']:.1f} s).",
        "",
    ]
    cost, _ = cost_table(a.work / "runs" / "nolatency", fast, a.reasoning_tokens)
    md += ["### Cost per 1,000 accepted rows (list prices, measured tokens)", ""] + cost + [""]
    text = "\n".join(md)
    print(text)
    (a.work / "result.json").write_text(json.dumps({"latency": slow, "nolatency": fast, "latency-streamed": slow_s,
                                                    "nolatency-streamed": fast_s}, indent=2))
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
