"""Streamed vs stage-by-stage `infir build` against per-model rate limits (issue #27, acceptance 1).

generate and mine ask gpt-4o-mini, verify asks o3-mini, and each model has its own tokens-per-minute
limit. Stage by stage (`--no-stream`), one model's limit is at work at a time, so the wall is about
the SUM of the two models' bounds; streamed (the default), chunk k enters the next stage as soon as it
is written, both limits work at once and the wall should approach the LARGEST bound.

Per config (the bundled sample, configs/sample.toml; the MS MARCO dev sample, configs/msmarco.toml):
1. Calibration: a streamed build against bench/llm_server.py with no limits and ~0 latency (time
   scale 1000, no latency draw). Its wall is the build's own work (interpreter start, BM25 index,
   every stage's CPU) and the server's count gives the tokens each model is asked (prompt by the
   server's rule + the max tokens asked: what the service counts against the TPM).
2. TPMs chosen from that count so the two models' bounds are comparable (o3-mini's bound
   `--bound-s` real seconds, gpt-4o-mini's `--ratio` of it): the realistic case of a run bound by
   both limits, where streaming can save most.
3. Two builds against a fresh server each (full buckets, same limits, the service's latencies at
   `--time-scale`): `infir build --until verify --no-stream`, then streamed. Each build has its own runs
   dir and its own LLM cache (a shared cache would make the second build free). `infir source` runs
   before the clock (it is not part of the LLM path) and every build's source shards are checked equal.

Bound of a model = tokens the server admitted for it in that build / its TPM (the fastest the service
allows; a bucket starts full, so a build can beat it by up to one minute's worth). Start-up is reported
two ways: the calibration wall (the build with no limits at ~0 latency) and the time from the build's
start to its first request (polled from the server). Byte-identity: the sha256 of every file of each
row stage's output but `_SUCCESS.json` (whose `seconds` differ), streamed vs stage-by-stage.

    python bench/bench_stream.py [--configs sample,msmarco] [--bound-s 45] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import llm_server  # noqa: E402
from bench_pipeline import run_infir as infir  # noqa: E402

KEY_ENV = "INFIR_BENCH_KEY"
ROW_STAGES = ("generate", "mine", "filter", "verify")
MODELS = {"generate": "gpt-4o-mini", "mine": "gpt-4o-mini", "verify": "o3-mini"}
FAST, SLOW = "gpt-4o-mini", "o3-mini"
# Per config: its file, its own overrides, and the shard size that gives each stage ~15 chunks to pipeline.
CONFIGS = {
    "sample": ("configs/sample.toml", {}, 10),
    "msmarco": ("configs/msmarco.toml", {}, 120),
}


class Poll:
    """Polls the server's counters while a build runs: when each model got its first request and its
    last one (so the report can say when the endpoint started working and when each model was busy)."""

    def __init__(self, url: str, every: float = 0.1):
        self.url, self.every = url, every
        self.t0 = time.perf_counter()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Poll":
        self.t0 = time.perf_counter()
        self._th.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._th.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                models = llm_server.stats(self.url).get("models", {})
            except OSError:
                models = {}
            now = time.perf_counter() - self.t0
            for m, t in models.items():
                n = int(t.get("requests", 0))
                if n and m not in self.first:
                    self.first[m] = now
                if n != self._seen.get(m):
                    self._seen[m], self.last[m] = n, now
            self._stop.wait(self.every)


def shard_hashes(run: Path) -> dict[str, str]:
    """Per row stage: one sha256 over every output file but `_SUCCESS.json` (name and bytes, sorted)."""
    out = {}
    for stage in ROW_STAGES:
        h = hashlib.sha256()
        files = _files(run / stage)
        for p in files:
            h.update(str(p.relative_to(run / stage)).encode() + b"\0" + p.read_bytes())
        out[stage] = f"{h.hexdigest()[:16]} ({len(files)} files)"
    return out


def stage_seconds(run: Path) -> dict[str, float]:
    out = {}
    for s in ROW_STAGES:
        p = run / s / "_SUCCESS.json"
        if p.exists():
            out[s] = float(json.loads(p.read_text()).get("seconds") or 0.0)
    return out


def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
    out = {}
    for model, t in after.get("models", {}).items():
        b = before.get("models", {}).get(model, {})
        out[model] = {k: v - b.get(k, 0) for k, v in t.items() if isinstance(v, (int, float))}
    return out


def one_build(a, work: Path, key: str, name: str, server_extra: list[str], stream: bool, log: Path) -> dict:
    cfg_file, overrides, shard = CONFIGS[key]
    shard = a.shard_rows.get(key, shard)
    proc, url = llm_server.start(0.0, reasoning_tokens=a.reasoning_tokens, extra=server_extra)
    try:
        sets = {
            "run.runs_dir": str(work / name), "run.name": key,
            "llm.backend": "openai", "llm.base_url": url, "llm.api_key_env": KEY_ENV,
            "llm.concurrency": a.concurrency, "llm.cache_path": str(work / name / "llm.sqlite3"),
            "write.releases_dir": str(work / name / "releases"),
            # a plain progress line per stage each second: when each stage's rows started and ended moving
            "run.progress_interval_s": 1,
            **{f"{s}.shard_rows": shard for s in ROW_STAGES}, **overrides,
        }
        if key == "msmarco" and a.msmarco_queries:
            sets["source.sample_queries"] = a.msmarco_queries
        args = ["--config", cfg_file] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
        source_s, rc = infir(["source", *args], log)
        if rc:
            raise RuntimeError(f"infir source failed (exit {rc}); see {log}")
        before = llm_server.stats(url)
        build_log = work / name / "build.log"
        with Poll(url) as poll:
            wall, rc = infir(["build", *args, "--until", "verify", *([] if stream else ["--no-stream"])], build_log)
        if rc:
            raise RuntimeError(f"infir build ({name}) failed (exit {rc}); see {log}")
        server = delta(llm_server.stats(url), before)
    finally:
        llm_server.stop(proc)
    run = work / name / key
    verify = json.loads((run / "verify" / "_SUCCESS.json").read_text())
    res = {"name": name, "stream": stream, "wall_s": wall, "source_s": source_s, "server": server,
           "first": dict(poll.first), "last": dict(poll.last), "stages": stage_seconds(run),
           "hashes": shard_hashes(run), "source_hash": shard_hashes_of(run / "source"), "run": str(run),
           "timeline": stage_timeline(build_log.read_text()),
           "rows": int(verify.get("rows", 0)), "summary": verify.get("summary", {}), "shard_rows": shard}
    print(f"  {key} {name}: {wall:.1f} s, first request at {min(poll.first.values(), default=float('nan')):.1f} s, "
          f"server {json.dumps({m: {k: t[k] for k in ('requests', 'rate_limited', 'tokens_asked')} for m, t in server.items()})}",
          flush=True)
    return res


def _files(d: Path) -> list[Path]:
    """A stage's output files: not `_SUCCESS.json` (compared apart) nor dotfiles (`.lock` holds a pid)."""
    return sorted(p for p in d.rglob("*") if p.is_file() and p.name != "_SUCCESS.json" and not p.name.startswith("."))


def success_diff(a: Path, b: Path) -> dict[str, list[str]]:
    """Per row stage: the keys of `_SUCCESS.json` that differ between two runs, but `seconds`."""
    out = {}
    for stage in ROW_STAGES:
        x, y = (json.loads((r / stage / "_SUCCESS.json").read_text()) for r in (a, b))
        out[stage] = [k for k in sorted(set(_flat(x)) | set(_flat(y)))
                      if k != "seconds" and _flat(x).get(k) != _flat(y).get(k)]
    return out


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


PROGRESS = re.compile(r"^\[progress\] (\w+): ([\d,]+)/[\d,]+ rows.*elapsed ([\d.]+)s")


def stage_timeline(text: str) -> dict[str, tuple[float | None, float | None]]:
    """Per stage, from its plain progress lines (one a second here; each stage's clock starts with the
    stage, and a streamed build starts them together): when its first rows were done, and when all were."""
    out: dict[str, list] = {}
    for line in text.splitlines():
        m = PROGRESS.match(line)
        if not m:
            continue
        stage, done, t = m.group(1), int(m.group(2).replace(",", "")), float(m.group(3))
        first_last = out.setdefault(stage, [None, None])
        if done and first_last[0] is None:
            first_last[0] = t
        if "(done)" in line:
            first_last[1] = t
    return {k: (v[0], v[1]) for k, v in out.items()}


def shard_hashes_of(d: Path) -> str:
    h = hashlib.sha256()
    for p in _files(d):
        h.update(str(p.relative_to(d)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def tpm_for(tokens: int, bound_s: float, scale: float) -> int:
    """The TPM (per service minute) at which `tokens` take `bound_s` real seconds, 3 significant digits."""
    tpm = tokens / (bound_s * scale / 60)
    digits = max(0, int(math.floor(math.log10(tpm))) - 2)
    return int(round(tpm / 10**digits) * 10**digits)


def run_config(a, key: str, log: Path) -> dict:
    work = a.work / key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # 1. no limits, ~0 latency: the build's own work, and the tokens each model is asked.
    calib = one_build(a, work, key, "nolimit", ["--time-scale", "1000"], True, log)
    asked = {m: calib["server"].get(m, {}).get("tokens_asked", 0) for m in (FAST, SLOW)}
    limits = {SLOW: tpm_for(asked[SLOW], a.bound_s, a.time_scale),
              FAST: tpm_for(asked[FAST], a.bound_s * a.ratio, a.time_scale)}
    extra = ["--time-scale", str(a.time_scale), "--chat-latency", a.chat_latency,
             "--reasoning-latency", a.reasoning_latency]
    for m, tpm in limits.items():
        extra += ["--limit", f"{m}=,{tpm}"]  # no RPM limit: tokens are what binds here
    # 2. the same build stage by stage, then streamed, each against a fresh server with these limits.
    by_stage = one_build(a, work, key, "stage-by-stage", extra, False, log)
    streamed = one_build(a, work, key, "streamed", extra, True, log)
    return {"key": key, "calibration": calib, "limits": limits, "server_extra": extra,
            "by_stage": by_stage, "streamed": streamed}


def bounds(res: dict, limits: dict[str, int], scale: float) -> dict[str, float]:
    """Per model: tokens admitted in this build / TPM, in real seconds."""
    return {m: res["server"].get(m, {}).get("tokens_asked", 0) / limits[m] * 60 / scale for m in limits}


def report(a, results: list[dict]) -> str:
    md = [
        f"Each config: `infir build --until verify` from the same source, stage by stage (`--no-stream`) and streamed "
        f"(the default), each against a fresh bench/llm_server.py (full buckets) with per-model TPM limits "
        f"(tests/openai_limits.py: a request counts its prompt, by the server's rule, plus the max tokens it asks; no RPM "
        f"limit), time scale {a.time_scale:g} (one service minute = {60 / a.time_scale:g} real s), latency lognormal "
        f"{a.chat_latency} (gpt-4o-mini) and {a.reasoning_latency} (o3-mini) service seconds, {a.reasoning_tokens:,} "
        f"reasoning tokens per judge answer, llm.concurrency {a.concurrency} (per stage), the shard_rows of the table for "
        f"every row stage (`--set generate.shard_rows=N` and the same for mine, filter, verify), each build its own runs "
        f"dir and LLM cache, `run.progress_interval_s=1`. The TPMs are chosen from a first build without limits so that "
        f"o3-mini's bound is ~{a.bound_s:g} s and gpt-4o-mini's ~{a.ratio:g}x of it (generate + mine ask gpt-4o-mini, "
        f"verify o3-mini; the cascade is off). Bound of a model = the tokens the server admitted for it in that build / "
        f"its TPM (real seconds). Start-up = the wall of the same streamed build with no limits at ~0 latency (time scale "
        f"1000, no latency draw: interpreter start, BM25 index, every stage's own CPU); the acceptance is "
        f"wall <= 1.15 x largest bound + start-up.",
        "",
        "| config | rows (shard_rows) | TPM gpt-4o-mini / o3-mini | tokens asked gpt-4o-mini / o3-mini | bound gpt-4o-mini / "
        "o3-mini (s) | largest / sum (s) | start-up (s) | build | wall (s) | wall / largest | wall / sum | 1.15 x largest "
        "+ start-up (s) | 429s |",
        "|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in results:
        key, lim, calib = r["key"], r["limits"], r["calibration"]
        for build in ("by_stage", "streamed"):
            b = r[build]
            bd = bounds(b, lim, a.time_scale)
            largest, total = max(bd.values()), sum(bd.values())
            srv = b["server"]
            asked = {m: srv.get(m, {}).get("tokens_asked", 0) for m in (FAST, SLOW)}
            req = sum(srv.get(m, {}).get("requests", 0) for m in (FAST, SLOW))
            r429 = sum(srv.get(m, {}).get("rate_limited", 0) for m in (FAST, SLOW))
            wall, target = b["wall_s"], 1.15 * largest + calib["wall_s"]
            streamed = build == "streamed"
            md.append(
                f"| {key} | {b['rows']:,} ({b['shard_rows']}) | {lim[FAST]:,} / {lim[SLOW]:,} | {asked[FAST]:,} / "
                f"{asked[SLOW]:,} | {bd[FAST]:.1f} / {bd[SLOW]:.1f} | {largest:.1f} / {total:.1f} | {calib['wall_s']:.1f} | "
                f"{'**streamed**' if streamed else 'stage by stage'} | {wall:.1f} | "
                + (f"**{wall / largest:.2f}** | {wall / total:.2f} | {target:.1f} ({'met' if wall <= target else '**not met**'}) | "
                   if streamed else f"{wall / largest:.2f} | **{wall / total:.2f}** | | ")
                + f"{r429:,} of {req:,} ({r429 / max(req, 1):.1%}) |")
        s, g = r["streamed"], r["by_stage"]
        same = {st: s["hashes"][st] == g["hashes"][st] for st in ROW_STAGES}
        diff = success_diff(Path(g["run"]), Path(s["run"]))
        diff_keys = sorted({k for ks in diff.values() for k in ks})

        def win(b: dict, m: str) -> str:
            return f"{b['first'].get(m, float('nan')):.1f}-{b['last'].get(m, float('nan')):.1f} s"

        def tl(b: dict) -> str:
            return ", ".join(f"{st} {t[0] if t[0] is not None else '-'}-{t[1] if t[1] is not None else '-'} s"
                             for st, t in b["timeline"].items() if st in MODELS)

        notes.append(
            f"- **{key}**: the row stages' files (every shard, `_SUCCESS.json` apart), streamed vs stage by stage: "
            + ", ".join(f"{st} {'identical' if same[st] else '**DIFFERENT**'}" for st in ROW_STAGES)
            + f" (verify `{s['hashes']['verify']}`); source identical: {s['source_hash'] == g['source_hash']}; "
            f"`_SUCCESS.json` but `seconds`: "
            + (f"identical" if not diff_keys else "differs in " + ", ".join(f"`{k}`" for k in diff_keys))
            + f". Accepted {s['summary'].get('accepted', 0):,} of {s['summary'].get('candidates', 0):,}. "
            f"Each model busy (first-last request, from the build's start): stage by stage gpt-4o-mini {win(g, FAST)}, "
            f"o3-mini {win(g, SLOW)}; streamed gpt-4o-mini {win(s, FAST)}, o3-mini {win(s, SLOW)}. Streamed, each LLM "
            f"stage's first rows done - all done (its progress lines; the stages start together): {tl(s)}. "
            f"Start-up build: {calib['wall_s']:.1f} s, its first request at "
            f"{min(calib['first'].values(), default=float('nan')):.1f} s.")
    load = os.getloadavg()[0]
    md += [""] + notes + ["", f"Load average at the end: {load:.1f} on {os.cpu_count()} cores."]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="sample,msmarco")
    ap.add_argument("--bound-s", type=float, default=45.0, help="o3-mini's bound, real seconds")
    ap.add_argument("--ratio", type=float, default=0.8, help="gpt-4o-mini's bound as a share of o3-mini's")
    ap.add_argument("--time-scale", type=float, default=60.0)
    ap.add_argument("--chat-latency", default="2,0.5", help="lognormal median,sigma (service seconds)")
    ap.add_argument("--reasoning-latency", default="40,0.67", help="lognormal median,sigma (service seconds)")
    ap.add_argument("--reasoning-tokens", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--msmarco-queries", type=int, default=0, help="source.sample_queries for MS MARCO (0: all)")
    ap.add_argument("--shard-rows", action="append", default=[], metavar="CONFIG=N")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "infir-bench-stream")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    a.shard_rows = {k: int(v) for k, _, v in (s.partition("=") for s in a.shard_rows)}
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "infir.log"
    log.write_text("")
    results = []
    for key in [k for k in a.configs.split(",") if k]:
        results.append(run_config(a, key, log))
        (a.work / "result.json").write_text(json.dumps(results, indent=2, default=str))
    text = report(a, results)
    print(text)
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
