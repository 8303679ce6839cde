"""What the judge cascade saves: cost per 1,000 accepted rows with and without it, online and batch,
on the MS MARCO dev sample (../shared/data) against the local OpenAI-compatible test server.

The server answers like bench/llm_server.py (texts of realistic length; o3-mini reports 1,500
reasoning tokens per call, as the project's cost benchmark assumes) and judges in the paper's
setting, by a hash of each row's query: the reasoning judge accepts 38.76% of the rows; the first
judge (gpt-4o-mini) fails 70% of the rows the judge rejects and 3% of those it accepts with a
token probability of 0.97, and 15% / 10% of the others with 0.6 (tests/cascade_script.py's
PaperScript). Its prompt caching is simulated (`prefix_cache`: OpenAI's rule, >= 1,024 tokens of
repeated prefix), so the cached share of the prompts is measured, not assumed.

Steps: source -> generate -> mine -> filter once; `infir calibrate-judge` (200 rows); verify four
times, each with its own cache (nothing reused): without / with the cascade (threshold from the
calibration), online / batch. Costs are the rows' usage columns (what each response cost, at
pipeline/llm/prices.toml); per 1,000 accepted rows = (generate + mine + verify) / accepted.

    python bench/bench_cascade.py [--rows 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for p in (str(REPO), str(REPO / "tests"), str(BENCH)):
    sys.path.insert(0, p)

from cascade_script import PaperScript  # noqa: E402
from openai_server import FakeOpenAIServer, data_block  # noqa: E402

import llm_server  # noqa: E402

MSMARCO = REPO.parent / "shared" / "data" / "msmarco-dev-sample"
REASONING_TOKENS = 1500


class Responder(PaperScript):
    """Realistic lengths for generate and poison (I- and Q- minimal edits of I+ and Q+, so that the
    filters let the rows through), the paper's verdicts for both judges, with realistic reasons."""

    def respond(self, body):
        name = body["response_format"]["json_schema"]["name"]
        user = body["messages"][1]["content"]
        rng = random.Random(user)
        if name == "GeneratedInstruction":
            return json.dumps({"instruction": llm_server._sentence(rng, rng.randint(18, 32)), "kind": "aspect"})
        if name == "PoisonedPair":
            words = data_block(user, "instruction").split()
            for i in rng.sample(range(len(words)), min(3, len(words))):
                words[i] = rng.choice(llm_server._WORDS)
            q = data_block(user, "query")
            return json.dumps({
                "instruction_negative": " ".join(words),
                "hard_negative_document_1": llm_server._passage(rng, rng.randint(55, 85)),
                "query_negative": f"{q} {rng.choice(llm_server._WORDS)}",
                "hard_negative_document_2": llm_server._passage(rng, rng.randint(55, 85)),
            })
        answer = super().respond(body)
        reason = lambda: llm_server._sentence(rng, rng.randint(12, 20))  # noqa: E731
        if name == "JudgeVerdicts":
            data = json.loads(answer)
            return json.dumps({c: {"passed": v["passed"], "reason": reason()} for c, v in data.items()})
        return answer


class Server(FakeOpenAIServer):
    def answer(self, body, n, fault, headers):
        reply = super().answer(body, n, fault, headers)
        usage = (reply.body or {}).get("usage") if isinstance(reply.body, dict) else None
        if usage and str(body.get("model", "")).startswith(("o1", "o3", "o4", "gpt-5")):
            usage["completion_tokens"] += REASONING_TOKENS
            usage["total_tokens"] += REASONING_TOKENS
            usage["completion_tokens_details"]["reasoning_tokens"] = REASONING_TOKENS
        return reply


def config(work: Path, base_url: str, rows: int, **over):
    from pipeline.config import load_config

    return load_config(REPO / "pipeline" / "configs" / "msmarco.toml", {
        "run.runs_dir": str(work / "runs"), "run.name": "bench", "source.path": str(MSMARCO),
        "source.sample_queries": rows, "source.decontaminate": [], "llm.backend": "openai",
        "llm.base_url": base_url, "llm.concurrency": 32, "llm.cache_path": str(work / "base.sqlite3"),
        "llm.batch_poll_interval_s": 0.01, **over,
    })


def usage(run: Path) -> dict:
    from pipeline.runner.llm import sum_usage
    from pipeline.store import read_stage_table

    t = read_stage_table(run / "verify")  # the part shards (accepted/ and rejected/ repeat them)
    out = {c.removeprefix("usage_"): sum_usage(t, c) for c in t.column_names if c.startswith("usage_")}
    out["accepted"] = int(sum(t.column("accepted").to_pylist()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import os

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-key")
    from pipeline.declaration import PIPELINE
    from pipeline.runner.calibrate import calibrate_judge
    from pipeline.runner.run import run_stage

    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, Server(responder=Responder().respond, batch_polls=1,
                                                    prefix_cache=True) as srv:
        work = Path(tmp)
        base = config(work, srv.base_url, a.rows)
        for name in ("source", "generate", "mine", "filter"):
            run_stage(PIPELINE, name, base)
        cal, lines = calibrate_judge(PIPELINE, config(work, srv.base_url, a.rows, **{
            "verify.cascade": True, "llm.cache_path": str(work / "calibration.sqlite3")}))
        for mode in ("online", "batch"):
            for on in (False, True):
                label = f"{'cascade' if on else 'judge only'}, {mode}"
                cfg = config(work, srv.base_url, a.rows, **{
                    "verify.cascade": on, "llm.mode": mode, "llm.cache_path": str(work / f"{mode}-{on}.sqlite3")})
                run_stage(PIPELINE, "verify", cfg, force=True)
                results[label] = usage(work / "runs" / "bench")
        upstream = usage(work / "runs" / "bench")  # generate and mine: the same rows in every variant
    report = {"rows": a.rows, "calibration": {k: cal[k] for k in ("recommended_threshold", "at_recommended", "cost_usd")},
              "calibration_lines": lines, "results": results, "upstream": {k: upstream[k] for k in ("generate", "mine")},
              "seconds": round(time.perf_counter() - t0, 1)}
    print_table(report)
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))


def print_table(report: dict) -> None:
    up = report["upstream"]
    up_cost = up["generate"]["cost_usd"] + up["mine"]["cost_usd"]
    print("\n".join(report["calibration_lines"][:2]))
    print("| verify | judge calls | first-judge calls | accepted | judge $ | first judge $ | cached share of prompt tokens "
          "| reasoning tokens | $ all stages | $ / 1k accepted |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in report["results"].items():
        j, f = r["verify"], r.get("verify_first") or {"calls": 0, "cost_usd": 0.0, "prompt_tokens": 0, "cached_tokens": 0}
        prompt = j["prompt_tokens"] + f["prompt_tokens"]
        cached = j["cached_tokens"] + f["cached_tokens"]
        total = up_cost + j["cost_usd"] + f["cost_usd"]
        print(f"| {label} | {j['calls']:,} | {f['calls']:,} | {r['accepted']:,} | {j['cost_usd']:.2f} | {f['cost_usd']:.2f} "
              f"| {cached / max(1, prompt):.1%} | {j['reasoning_tokens']:,} | {total:.2f} | **{1000 * total / max(1, r['accepted']):.2f}** |")
    res = report["results"]
    for mode in ("online", "batch"):
        plain, casc = res[f"judge only, {mode}"], res[f"cascade, {mode}"]
        per = [(up_cost + r["verify"]["cost_usd"] + (r.get("verify_first") or {"cost_usd": 0.0})["cost_usd"])
               / max(1, r["accepted"]) for r in (plain, casc)]
        print(f"{mode}: judge requests -{1 - casc['verify']['calls'] / max(1, plain['verify']['calls']):.1%}, "
              f"accepted {plain['accepted']:,} -> {casc['accepted']:,}, $ / 1k accepted -{1 - per[1] / per[0]:.1%}")
    print(f"generate + mine: ${up_cost:.2f} ({up['generate']['calls']:,} + {up['mine']['calls']:,} calls); "
          f"cached share of their prompts: "
          f"{(up['generate']['cached_tokens'] + up['mine']['cached_tokens']) / max(1, up['generate']['prompt_tokens'] + up['mine']['prompt_tokens']):.1%}")
    print(f"_`python bench/bench_cascade.py --rows {report['rows']}`: {report['seconds']:.0f} s._")


if __name__ == "__main__":
    main()
