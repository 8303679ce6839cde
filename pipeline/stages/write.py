"""`infir write`: the accepted rows of a run become a versioned, immutable release."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.errors import InfirError
from pipeline.progress import console, print_summary
from pipeline.stages import llm_common as lc
from pipeline.stages.common import StageResult, run_dir
from pipeline.store import require_stage, write_json_atomic


def corpus_usage(rd: Path) -> dict:
    """Tokens, cost and calls of every candidate row, summed from the per-row usage columns."""
    # Only the usage columns, shard by shard: the whole verify table (every candidate with its mined
    # negatives) made the write stage's memory grow with the candidates (1.6 GiB at 100k).
    out = {stage: {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "calls": 0}
           for stage in ("generate", "mine", "verify")}
    for path in sorted((rd / "verify").glob("part-*.parquet")):
        try:
            table = pq.read_table(path, columns=[f"usage_{stage}" for stage in out])
        except (pa.ArrowInvalid, OSError) as e:
            raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun verify with --force") from None
        for stage, total in out.items():
            for k, v in lc.sum_usage(table, f"usage_{stage}").items():
                total[k] += v
    out["total"] = {k: sum(out[s][k] for s in ("generate", "mine", "verify")) for k in out["generate"]}
    return out


def _num_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun verify with --force") from None


def release_stats(cfg, rd: Path) -> dict:
    verify = require_stage(rd, "verify")["summary"]
    usage = corpus_usage(rd)
    total = usage["total"]
    # Only what shapes the content goes into the manifest: rerunning with another concurrency,
    # cache path or run name must not count as a different release.
    content_config = {
        "source": json.loads(cfg.source.model_dump_json()),
        "generate": json.loads(cfg.generate.model_dump_json()),
        "mine": json.loads(cfg.mine.model_dump_json()),
        "verify": json.loads(cfg.verify.model_dump_json()),
        "write": json.loads(cfg.write.model_dump_json(exclude={"version", "releases_dir"})),
        "llm": {"backend": cfg.llm.backend},
    }
    return {
        "candidates": verify["candidates"],
        "accepted": verify["accepted"],
        "rejected": verify["rejected"],
        "failed": verify["failed"],
        "failures": verify["failed_checks"],
        "pass_rate_per_check": verify["pass_rate_per_check"],
        "tokens": {"prompt": total["prompt_tokens"], "completion": total["completion_tokens"]},
        "cost_usd": round(total["cost_usd"], 6),
        "llm_calls": total["calls"],
        "usage_per_stage": usage,
        "backend": cfg.llm.backend,
        "config": content_config,
        "code_version": __version__,
    }


def run_write(cfg, force: bool = False, version: str | None = None, bump: str | None = None) -> StageResult:
    from pipeline.release import write_release
    from pipeline.report import release_files

    w = cfg.write
    rd = run_dir(cfg)
    verify = require_stage(rd, "verify")["summary"]
    if not verify.get("accepted"):
        raise InfirError(
            f"{rd / 'verify'}: no accepted rows ({verify.get('candidates', 0)} candidate(s)); nothing to release. "
            "Why rows were dropped: verify/rejected/, failed rows' verify_error, source/quarantine.parquet"
        )
    # The shards, not a table: the writer streams them, so its memory does not grow with the corpus.
    accepted = sorted((rd / "verify" / "accepted").glob("part-*.parquet"))
    if not accepted:
        raise InfirError(f"{rd / 'verify' / 'accepted'}: no 'part' shards; rerun verify with --force")
    nrows = sum(_num_rows(p) for p in accepted)
    stats = release_stats(cfg, rd)
    result = write_release(
        accepted,
        stats,
        Path(w.releases_dir),
        w.name,
        version=None if bump else (version or w.version),
        bump=bump,
        split_ratios=tuple(w.split_ratios),
        seed=w.seed,
        max_rows_per_shard=w.max_rows_per_shard,
        st_export=w.st_export,
        license=w.license,
        extra_files=release_files(rd),  # report.html/.json made by `infir report`, if current
    )
    success = {
        "stage": "write",
        "rows": nrows,
        "release": str(result.path),
        "version": result.version,
        "created": result.created,
        "summary": {"release": str(result.path), "rows": nrows, "cost_usd": stats["cost_usd"],
                    "llm_calls": stats["llm_calls"]},
    }
    (rd / "write").mkdir(parents=True, exist_ok=True)
    write_json_atomic(success, rd / "write" / "_SUCCESS.json")
    if result.created:
        print_summary("write", [("release", str(result.path)), ("rows", nrows),
                                ("candidates", stats["candidates"]), ("LLM calls", stats["llm_calls"]),
                                ("cost USD", f"{stats['cost_usd']:.4f}")])
    else:
        console.print(f"[green]write[/]: {result.path} already holds this content; nothing to do")
    return StageResult("write", not result.created, success)
