"""`infir write`: the accepted rows of a run become a versioned, immutable release."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.columns import usage_columns
from pipeline.errors import InfirError
from pipeline.progress import console
from pipeline.runner.llm import sum_usage
from pipeline.runner.shape import Context, Option, Stage


def corpus_usage(upstream_dir: Path, columns: list[str]) -> dict:
    """Tokens, cost and calls of every candidate row, summed from the per-row usage columns."""
    # Only the usage columns, shard by shard: the whole upstream table (every candidate with its
    # mined negatives) made the write stage's memory grow with the candidates (1.6 GiB at 100k).
    stages = [c.removeprefix("usage_") for c in columns]
    out = {s: {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "calls": 0} for s in stages}
    for path in sorted(upstream_dir.glob("part-*.parquet")):
        try:
            table = pq.read_table(path, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun {upstream_dir.name} with --force") from None
        for stage, total in out.items():
            for k, v in sum_usage(table, f"usage_{stage}").items():
                total[k] = total.get(k, 0) + v
    out["total"] = {k: sum(out[s][k] for s in stages) for k in ("prompt_tokens", "completion_tokens", "cost_usd", "calls")}
    return out


def _num_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun {path.parent.parent.name} with --force") from None


def release_stats(ctx: Context, judged: dict) -> dict:
    cfg = ctx.cfg
    usage = corpus_usage(ctx.upstream_dir, usage_columns(ctx.schema))
    total = usage["total"]
    # Only what shapes the content goes into the manifest: rerunning with another concurrency,
    # cache path or run name must not count as a different release.
    content_config = {
        section: json.loads(getattr(cfg, section).model_dump_json(
            exclude={"version", "releases_dir"} if section == ctx.stage.section else None))
        for section in ctx.sections
    }
    content_config["llm"] = {"backend": cfg.llm.backend}
    return {
        "candidates": judged["candidates"],
        "accepted": judged["accepted"],
        "rejected": judged["rejected"],
        "failed": judged["failed"],
        "failures": judged["failed_checks"],
        "pass_rate_per_check": judged["pass_rate_per_check"],
        "tokens": {"prompt": total["prompt_tokens"], "completion": total["completion_tokens"]},
        "cost_usd": round(total["cost_usd"], 6),
        "llm_calls": total["calls"],
        "usage_per_stage": usage,
        "backend": cfg.llm.backend,
        "config": content_config,
        "code_version": __version__,
        "license_name": cfg.write.license_name,
        "license_link": cfg.write.license_link,
        **release_audit(ctx),
    }


def release_audit(ctx: Context) -> dict:
    """{"audit": figures} of the run's human audits of this verify output (`infir audit score`), or
    {} when there is none: a release without an audit keeps the manifest it had before audits existed.
    The audit is part of the release's content, so an audit made after `write` makes the next write
    a new version (--bump), never a changed card under an old one (docs/release.md)."""
    from pipeline.report.audit import run_audits

    audits, warnings = run_audits(ctx.run_dir)
    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}")
    return {"audit": audits} if audits else {}


class Write(Stage):
    name = "write"
    section = "write"
    # Runs every time: the release's own rule decides (identical content: a no-op; different
    # content under an existing version: refused).
    always_run = True
    make_help = "stage 5: the versioned release"
    doc = """Write the accepted rows as a versioned release (Parquet shards, manifest, dataset card).

    Output: releases/<name>/<version>/ with data/<split>-NNNNN-of-NNNNN.parquet, manifest.json (sha256
    and rows of every shard, config, models, prompt hashes, tokens, cost) and README.md with plots.
    A version is immutable: identical content is a no-op, different content is refused (use --bump
    or a new --version). `--verify DIR` checks every checksum and row count of a written release.
    """
    options = (
        Option("--version", "version", str, "Release version (default: write.version)."),
        Option("--bump", "bump", str, "patch | minor | major: the next version."),
        Option("--st-export", "st_export", bool, "Also write anchor/positive/negative files for sentence-transformers.",
               key="write.st_export", secondary="--no-st-export"),
        Option("--verify", "verify_dir", Path, "Only check a written release: every checksum and row count."),
    )

    def standalone(self, options: dict) -> bool:
        """`--verify DIR`: only check a written release (every checksum and row count)."""
        if options.get("verify_dir") is None:
            return False
        from pipeline.release import verify_release

        report = verify_release(options["verify_dir"])
        console.print(f"[green]ok[/]: {report.summary()}")
        return True

    def check(self, ctx: Context) -> None:
        w, bump = ctx.settings, ctx.options.get("bump")
        if w.license == "other" and not (w.license_name and w.license_link):
            raise InfirError(
                'write.license = "other": set write.license_name and write.license_link too '
                "(the Hugging Face Hub requires both for a custom licence)"
            )
        if bump is not None and bump not in ("patch", "minor", "major"):
            raise InfirError(f"--bump {bump!r}: expected patch, minor or major")
        from pipeline.release.manifest import source_date_epoch

        source_date_epoch()  # a bad SOURCE_DATE_EPOCH: one line before any row is read

    def identity(self, ctx: Context) -> tuple:
        return (ctx.settings, ctx.options.get("version"), ctx.options.get("bump"))

    def run(self, ctx: Context) -> dict:
        from pipeline.release import write_release
        from pipeline.report import release_files

        w, bump = ctx.settings, ctx.options.get("bump")
        judged = ctx.upstream_success()["summary"]
        if not judged.get("accepted"):
            raise InfirError(
                f"{ctx.upstream_dir}: no accepted rows ({judged.get('candidates', 0)} candidate(s)); nothing to release. "
                f"Why rows were dropped: {ctx.upstream_dir.name}/rejected/, failed rows' errors, source/quarantine.parquet"
            )
        # The shards, not a table: the writer streams them, so its memory does not grow with the corpus.
        accepted = sorted((ctx.upstream_dir / "accepted").glob("part-*.parquet"))
        if not accepted:
            raise InfirError(f"{ctx.upstream_dir / 'accepted'}: no 'part' shards; rerun {ctx.upstream_dir.name} with --force")
        nrows = sum(_num_rows(p) for p in accepted)
        stats = release_stats(ctx, judged)
        result = write_release(
            accepted, stats, Path(w.releases_dir), w.name,
            version=None if bump else (ctx.options.get("version") or w.version), bump=bump,
            split_ratios=tuple(w.split_ratios), seed=w.seed, max_rows_per_shard=w.max_rows_per_shard,
            st_export=w.st_export, license=w.license,
            extra_files=release_files(ctx.run_dir),  # report.html/.json made by `infir report`, if current
        )
        return {"release": str(result.path), "version": result.version, "created": result.created, "rows": nrows,
                "candidates": stats["candidates"], "cost_usd": stats["cost_usd"], "llm_calls": stats["llm_calls"]}

    def print_summary(self, ctx: Context, summary: dict) -> None:
        if summary["created"]:
            super().print_summary(ctx, summary)
        else:
            console.print(f"[green]write[/]: {summary['release']} already holds this content; nothing to do")


STAGE = Write()
