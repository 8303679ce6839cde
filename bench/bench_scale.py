"""The paper's run, rehearsed: 100,000 candidates against a local server that enforces what OpenAI
enforces, online and through the Batch API.

InF-IR's corpus came from ~100k candidates (about 300k requests, several hundred million tokens)
against OpenAI. This benchmark runs the same size here, on the 1M-passage synthetic collection of
bench/synthetic.py (the 100k queries and the shared BM25 index of bench/bench_memory.py), against
bench/llm_server.py in its own process with the service's behaviour (tests/openai_limits.py):
per-model requests/tokens per minute with the real x-ratelimit-* headers and 429s (a request's
tokens are its prompt, counted by the server's own rule, plus the max tokens it asks for), a
reasoning-latency distribution with a long tail, occasional 5xx, the Batch API's enqueued-token
limit (token_limit_exceeded), and a time scale: one server minute is 60 / scale real seconds, so
hours of the service's time pass in minutes here. Every figure in "service time" is real seconds x
scale.

Per stage (each an `infir` command in its own process, peak RSS from getrusage of a one-shot
wrapper; the shared BM25 index is loaded, not built):
- wall, against the provider bound: the tokens the stage asked of its model (the server's count of
  the requests it admitted) / the model's tokens per minute. That is the fastest the service allows.
- requests, 429s and their share, 5xx, batch waves;
- spend: what infir recorded (the stages' summaries) against what the server billed (its usage of
  every answer it sent, priced with the same price table);
- rows lost (candidates that reached neither the accepted nor the rejected table), the LLM cache's
  size, and `infir status` / `infir report` on the finished run.

    python bench/bench_scale.py [--candidates 100000] [--time-scale 20] [--modes online,batch] [--out FILE]
"""

from __future__ import annotations

import argparse
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

import bench_memory  # noqa: E402
import llm_server  # noqa: E402

KEY_ENV = "INFIR_BENCH_KEY"
LLM_STAGES = ("generate", "mine", "verify")
STAGES = ("generate", "mine", "filter", "verify", "write")
MODELS = {"generate": "gpt-4o-mini", "mine": "gpt-4o-mini", "verify": "o3-mini"}


def start_server(a: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """bench/llm_server.py in its own process with the service's options (its module docstring)."""
    extra = ["--time-scale", str(a.time_scale), "--error-rate", str(a.error_rate),
             "--reasoning-latency", a.reasoning_latency, "--chat-latency", a.chat_latency,
             "--batch-seconds", str(a.batch_seconds)]
    for spec in a.limit:
        extra += ["--limit", spec]
    for spec in a.queue:
        extra += ["--batch-queue-tokens", spec]
    return llm_server.start(0.0, reasoning_tokens=a.reasoning_tokens, extra=extra)


def limits_of(specs: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for spec in specs:
        model, _, values = spec.partition("=")
        rpm, _, tpm = values.partition(",")
        out[model] = (float(rpm or 0), float(tpm or 0))
    return out


def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
    """Per model: the server's counters of one stage."""
    out = {}
    for model, t in after.get("models", {}).items():
        b = before.get("models", {}).get(model, {})
        d = {k: v - b.get(k, 0) for k, v in t.items() if isinstance(v, (int, float))}
        if any(d.values()):
            out[model] = d
    return out


def run_mode(a: argparse.Namespace, mode: str, data: Path, index_dir: Path, log: Path) -> dict:
    name = f"scale-{mode}-{a.candidates}"
    run = a.work / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "index").symlink_to(index_dir)
    cache = a.work / f"{name}.sqlite3"
    for p in (cache, Path(str(cache) + "-wal"), Path(str(cache) + "-shm")):
        p.unlink(missing_ok=True)
    proc, url = start_server(a)
    try:
        sets = {
            "run.runs_dir": str(a.work / "runs"), "run.name": name,
            "source.format": "parquet", "source.path": str(bench_memory.dataset(data, a.candidates)),
            "source.decontaminate": "[]", "source.sample_queries": 0, "source.max_passage_words": 400,
            "llm.backend": "openai", "llm.base_url": url, "llm.api_key_env": KEY_ENV,
            "llm.concurrency": a.concurrency, "llm.cache_path": str(cache), "llm.mode": mode,
            "llm.batch_poll_interval_s": a.poll_s,
            # near misses in generate would add a third BM25 pass per row (mine makes two)
            "generate.use_near_misses": "false",
            "write.releases_dir": str(a.work / "releases"), "write.name": f"bench-{name}",
        }
        sets.update(dict(x.split("=", 1) for x in a.set))
        for spec in a.queue:
            model, _, tokens = spec.partition("=")
            sets[f'llm.batch_queue_tokens."{model}"'] = tokens
        args = ["--config", "configs/msmarco.toml"] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
        env_cmd = [sys.executable, "-m", "pipeline.cli"]
        res: dict = {"mode": mode, "stages": {}}
        res["source"] = bench_memory.measured(env_cmd + ["source", *args], log)
        for stage in STAGES:
            before = llm_server.stats(url)
            m = bench_memory.measured(env_cmd + [stage, *args], log)
            after = llm_server.stats(url)
            m["server"] = delta(after, before)
            m["batch_server"] = delta(after.get("batch", {}), before.get("batch", {}))
            res["stages"][stage] = m
            print(f"  {mode}, {stage}: {m['seconds']:.1f} s, peak {m['peak_mib']:.0f} MiB, "
                  f"server {json.dumps(m['server'])}", flush=True)
        res["server_final"] = llm_server.stats(url)
    finally:
        llm_server.stop(proc)
    res["cache_mib"] = sum(p.stat().st_size for p in cache.parent.glob(cache.name + "*")) / 2**20
    res.update(outcome(run))
    t0 = time.perf_counter()
    st = subprocess.run(env_cmd + ["status", str(run)], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "COLUMNS": "160"})
    res["status_s"], res["status_rc"] = time.perf_counter() - t0, st.returncode
    res["status_text"] = st.stdout + st.stderr
    rep = bench_memory.measured(env_cmd + ["report", str(run), "--no-hardness"], log)
    res["report"] = rep
    html = run / "report.html"
    res["report_mib"] = html.stat().st_size / 2**20 if html.exists() else None
    return res


def outcome(run: Path) -> dict:
    """Rows in, accepted, rejected, failed (a rerun retries them), lost; spend as infir recorded it."""
    from pipeline.status import stage_states

    states = {s["stage"]: s for s in stage_states(run)}
    src = states["source"]["rows"] or 0
    v = states["verify"]["summary"]
    accepted, rejected = v.get("accepted", 0), v.get("rejected", 0)
    failed = sum((states[s]["counts"].get("failed") or 0) for s in LLM_STAGES)
    recorded = {s: (states[s]["summary"].get("llm") or {}).get("cost_usd", 0.0) for s in LLM_STAGES}
    rows_usd = {s: states[s]["llm"].get("cost_usd", 0.0) for s in LLM_STAGES}
    return {"source_rows": src, "accepted": accepted, "rejected": rejected, "failed": failed,
            "lost": src - accepted - rejected, "recorded_usd": recorded, "rows_usd": rows_usd,
            "batch": {s: {k: v for k, v in (states[s]["summary"].get("llm") or {}).items() if k.startswith("batch_")}
                      for s in LLM_STAGES}}


def billed_usd(stats: dict) -> float:
    """The server's bill: its usage of every answer sent, online and batch, at list prices."""
    from pipeline.llm.pricing import PriceTable

    prices = PriceTable.load()
    total = 0.0
    for part, batch in (("models", False), ("batch", True)):
        src = stats.get(part, {})
        src = src.get("models", src) if part == "batch" else src
        for model, t in src.items():
            total += prices.cost(model, t.get("prompt_tokens", 0), t.get("completion_tokens", 0),
                                 t.get("cached_tokens", 0), batch=batch)
    return total


def table(a: argparse.Namespace, res: dict) -> list[str]:
    limits = limits_of(a.limit)
    scale = a.time_scale
    rows = ["| stage | model | wall (s) | service time | provider bound (service time) | wall / bound | "
            "requests | 429s | share 429 | 5xx | peak RSS (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tot_wall = tot_bound = 0.0
    for stage in STAGES:
        m = res["stages"][stage]
        srv = m["server"]
        model = MODELS.get(stage, "")
        t = srv.get(model, {})
        wall = m["seconds"]
        tot_wall += wall
        bound_s = None
        if res["mode"] == "online" and model and limits.get(model, (0, 0))[1]:
            bound_s = t.get("tokens_asked", 0) / limits[model][1] * 60 / scale
            tot_bound += bound_s
        req, r429 = t.get("requests", 0), t.get("rate_limited", 0)
        share = f"{r429 / req:.2%}" if req else ""
        rows.append(
            f"| {stage} | {model} | {wall:,.1f} | {fmt_h(wall * scale)} | "
            f"{fmt_h(bound_s * scale) if bound_s else ''} | {wall / bound_s:.2f} | " if bound_s else
            f"| {stage} | {model} | {wall:,.1f} | {fmt_h(wall * scale)} | | | "
        )
        rows[-1] += f"{req:,} | {r429:,} | {share} | {t.get('server_errors', 0):,} | {m['peak_mib']:,.0f} |"
    llm_wall = sum(res["stages"][s]["seconds"] for s in LLM_STAGES)
    if tot_bound:
        # The provider bounds the LLM stages; filter and write are the pipeline's own CPU time.
        rows.append(f"| **LLM stages** | | **{llm_wall:,.1f}** | {fmt_h(llm_wall * scale)} | {fmt_h(tot_bound * scale)} | "
                    f"**{llm_wall / tot_bound:.2f}** | | | | | |")
        rows.append(f"| **every stage** | | **{tot_wall:,.1f}** | {fmt_h(tot_wall * scale)} | {fmt_h(tot_bound * scale)} | "
                    f"**{tot_wall / tot_bound:.2f}** | | | | | |")
    else:
        rows.append(f"| **every stage** | | **{tot_wall:,.1f}** | {fmt_h(tot_wall * scale)} | | | | | | | |")
    return rows


def batch_table(a: argparse.Namespace, res: dict) -> list[str]:
    """Batch mode: no rate limit applies; what bounds it is the enqueued-token limit (waves)."""
    rows = ["| stage | model | wall (s) | batch lines answered | waves | refused by the queue | peak RSS (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for stage in STAGES:
        m = res["stages"][stage]
        model = MODELS.get(stage, "")
        answered = m.get("batch_server", {}).get(model, {}).get("requests", 0)
        b = res["batch"].get(stage, {})
        rows.append(f"| {stage} | {model} | {m['seconds']:,.1f} | {answered:,} | {b.get('batch_waves', '')} | "
                    f"{b.get('batch_queue_full', '')} | {m['peak_mib']:,.0f} |")
    total = sum(res["stages"][s]["seconds"] for s in STAGES)
    rows.append(f"| **every stage** | | **{total:,.1f}** | | | | |")
    return rows


def fmt_h(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def summary_lines(a: argparse.Namespace, res: dict) -> list[str]:
    billed = billed_usd(res["server_final"])
    recorded = sum(res["recorded_usd"].values())
    final = res["server_final"]
    reqs = sum(t.get("requests", 0) for t in final.get("models", {}).values())
    r429 = sum(t.get("rate_limited", 0) for t in final.get("models", {}).values())
    lines = [
        f"- Rows: {res['source_rows']:,} candidates in; {res['accepted']:,} accepted, {res['rejected']:,} rejected, "
        f"{res['failed']:,} failed; **{res['lost']:,} lost**.",
        f"- Spend: infir recorded **${recorded:,.2f}**; the server billed **${billed:,.2f}** "
        f"({(recorded - billed) / billed:+.3%}).",
    ]
    if res["mode"] == "online":
        lines.append(f"- 429s: {r429:,} of {reqs:,} online requests (**{r429 / max(reqs, 1):.2%}**).")
    else:
        bq = final.get("batch", {})
        lines.append(f"- Batch: {bq.get('batch_creations', 0):,} batches, {bq.get('token_limit_failures', 0):,} refused with "
                     f"token_limit_exceeded; most tokens queued per model {bq.get('batch_queue_peak', {})} (the limits: "
                     f"{', '.join(a.queue)}); online requests: {reqs:,}. A batch completes {a.batch_seconds:g} s after it "
                     "is queued here, so the wall is infir's own work, not the service's 24-hour window.")
    lines.append(f"- LLM cache: {res['cache_mib']:,.0f} MiB. `infir status`: exit {res['status_rc']} in "
                 f"{res['status_s']:.1f} s. `infir report --no-hardness`: {res['report']['seconds']:.0f} s, "
                 f"peak {res['report']['peak_mib']:,.0f} MiB, report.html {res['report_mib'] or 0:.1f} MB.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=100_000)
    ap.add_argument("--modes", default="online,batch")
    ap.add_argument("--time-scale", type=float, default=20.0)
    ap.add_argument("--limit", action="append", default=None, metavar="MODEL=RPM,TPM")
    ap.add_argument("--queue", action="append", default=None, metavar="MODEL=TOKENS",
                    help="the Batch API's enqueued-token limit per model (server and llm.batch_queue_tokens)")
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--reasoning-tokens", type=int, default=1500)
    ap.add_argument("--reasoning-latency", default="40,0.67", help="lognormal median,sigma (service seconds)")
    ap.add_argument("--chat-latency", default="2,0.5", help="lognormal median,sigma (service seconds)")
    ap.add_argument("--error-rate", type=float, default=0.002)
    ap.add_argument("--batch-seconds", type=float, default=5.0, help="real seconds a batch takes to complete")
    ap.add_argument("--poll-s", type=float, default=2.0)
    ap.add_argument("--data-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "infir-bench-pipeline" / "memory-data")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "infir-bench-scale")
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help="more config overrides")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    # A judge shard waits for its slowest answer before the next one starts (the reasoning tail:
    # p99.9 of the latency above is ~3x its median), so the judge's shards are larger here.
    a.set = a.set if a.set is not None else ["verify.shard_rows=20000"]
    a.limit = a.limit or ["gpt-4o-mini=5000,1000000", "o3-mini=5000,2000000"]
    a.queue = a.queue or ["gpt-4o-mini=20000000", "o3-mini=20000000"]
    os.environ[KEY_ENV] = "sk-bench-not-a-key"
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "infir.log"
    log.write_text("")
    t0 = time.perf_counter()
    # The same data as bench_memory.py's default sizes (its stamp holds the query count: a smaller
    # run takes the first N of the 100k queries instead of rebuilding the 1M-passage copy).
    data = bench_memory.build_data(a.data_dir, max(a.candidates, 100_000))
    index_dir = a.data_dir / "index"
    index_dir.mkdir(exist_ok=True)
    bench_memory.warm_index(a.work, data, a.candidates, index_dir, log)
    results = {}
    for mode in [m for m in a.modes.split(",") if m]:
        results[mode] = run_mode(a, mode, data, index_dir, log)
        (a.work / "result.json").write_text(json.dumps(results, indent=2, default=str))
    md = [f"{a.candidates:,} candidates (bench_memory's queries over the 1,000,000-passage synthetic collection; "
          f"BM25; generate.use_near_misses=false), configs/msmarco.toml's models, against bench/llm_server.py "
          f"with OpenAI's limits at time scale {a.time_scale:g} (one service minute = {60 / a.time_scale:g} real s): "
          f"limits {', '.join(a.limit)} (RPM,TPM per service minute); enqueued-token limits {', '.join(a.queue)}; "
          f"latency lognormal {a.chat_latency} (chat) and {a.reasoning_latency} (reasoning), service seconds; "
          f"{a.error_rate:.1%} 5xx; {a.reasoning_tokens:,} reasoning tokens per judge answer; "
          f"llm.concurrency {a.concurrency}; {', '.join(a.set) or 'no other settings'}. Each stage is one `infir` command; the wall is real seconds.", ""]
    for mode, res in results.items():
        rows = table(a, res) if mode == "online" else batch_table(a, res)
        md += [f"### {mode.capitalize()}", ""] + rows + [""] + summary_lines(a, res) + [""]
    text = "\n".join(md)
    print(text)
    print(f"_`python bench/bench_scale.py --candidates {a.candidates}`: {time.perf_counter() - t0:.0f} s._")
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
