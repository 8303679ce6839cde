"""`infir`: one subcommand per stage, plus `build` and `status`.

The CLI only parses flags into config overrides and calls stage functions. Errors reach the
user as one line and a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer

from pipeline.config import load_config, parse_value
from pipeline.errors import InfirError

app = typer.Typer(
    name="infir",
    help="Build instruction-following retrieval training corpora (InF-IR style), stage by stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect the LLM response cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_state = {"debug": False}

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config (TOML). Default: configs/sample.toml.")
RunOpt = typer.Option(None, "--run", help="Run name (a folder under run.runs_dir). Overrides run.name.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set source.sample_queries=500 (repeatable).")
ForceOpt = typer.Option(False, "--force", help="Redo the stage even if it finished, discarding its output.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _overrides(sets: list[str] | None, **flags: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise InfirError(f"--set {item!r}: expected KEY=VALUE, e.g. --set source.sample_queries=500")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_value(raw.strip())
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def _config(config: Optional[Path], run: Optional[str], sets: list[str] | None, **flags: Any):
    return load_config(config, _overrides(sets, **{"run.name": run}, **flags))


@app.command()
def source(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    input: Optional[Path] = typer.Option(None, "--input", help="Input folder (source.path)."),
    format: Optional[str] = typer.Option(None, "--format", help="beir | msmarco | jsonl | parquet | hf."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Number of queries to sample (0 = all)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    decontaminate: Optional[list[Path]] = typer.Option(
        None, "--decontaminate", help="Evaluation topic file to decontaminate against (repeatable)."
    ),
    set_: Optional[list[str]] = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Read queries, passages and qrels; write one row per (query, judged positive passage).

    Input: BEIR (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), MS MARCO tsv (collection.tsv,
    queries.tsv, qrels), jsonl or Parquet with a column map, or a Hugging Face dataset.
    Output: runs/<run>/source/ (rows, the whole collection under collection/, quarantine.parquet
    with every dropped line and its reason, _SUCCESS.json). A finished stage is skipped on rerun.
    """
    from pipeline.stages.common import save_effective_config
    from pipeline.stages.source import run_source

    cfg = _config(
        config,
        run,
        set_,
        **{
            "source.path": str(input) if input else None,
            "source.format": format,
            "source.sample_queries": sample,
            "source.seed": seed,
            "source.decontaminate": [str(p) for p in decontaminate] if decontaminate else None,
        },
    )
    run_source(cfg, force=force)
    save_effective_config(cfg)  # after the stage: a process refused by the stage lock must not overwrite it


BackendOpt = typer.Option(None, "--backend", help="LLM backend: offline (default, no key) or openai.")
ModelOpt = typer.Option(None, "--model", help="Model for this stage (overrides the config).")
MaxCostOpt = typer.Option(None, "--max-cost-usd", help="Stop cleanly (resumable) once this much is spent.")
ConcurrencyOpt = typer.Option(None, "--concurrency", help="LLM requests in flight at once.")
ModeOpt = typer.Option(
    None, "--mode", help="online (default) or batch: through the Batch API at batch prices, resumable (needs --backend openai)."
)
DryRunOpt = typer.Option(
    False, "--dry-run", help="Estimate calls, tokens and cost (online and batch prices); send nothing."
)


def _llm_flags(backend, max_cost, concurrency, mode) -> dict[str, Any]:
    """The LLM options `build` and each LLM stage share, as config overrides."""
    return {"llm.backend": backend, "llm.max_cost_usd": max_cost, "llm.concurrency": concurrency, "llm.mode": mode}


def _llm_stage(stage: str, config, run, set_, backend, model, max_cost, concurrency, force, dry_run, mode) -> None:
    from pipeline.stages.common import save_effective_config
    from pipeline.stages.registry import STAGES

    cfg = _config(config, run, set_, **_llm_flags(backend, max_cost, concurrency, mode), **{f"{stage}.model": model})
    if dry_run:
        from pipeline.stages.estimate import dry_run as estimate

        estimate(cfg, [stage])
        return
    STAGES[stage](cfg, force=force)
    save_effective_config(cfg)


def _register_llm_stage(stage: str, doc: str) -> None:
    """generate, mine and verify take the same options; one definition registers all three."""

    def command(
        config: Optional[Path] = ConfigOpt,
        run: Optional[str] = RunOpt,
        backend: Optional[str] = BackendOpt,
        model: Optional[str] = ModelOpt,
        max_cost_usd: Optional[float] = MaxCostOpt,
        concurrency: Optional[int] = ConcurrencyOpt,
        set_: Optional[list[str]] = SetOpt,
        force: bool = ForceOpt,
        dry_run: bool = DryRunOpt,
        mode: Optional[str] = ModeOpt,
    ) -> None:
        _llm_stage(stage, config, run, set_, backend, model, max_cost_usd, concurrency, force, dry_run, mode)

    command.__doc__ = doc
    app.command(stage)(command)


_register_llm_stage(
    "generate",
    """Write the positive instruction I+ for every source row (prompt: prompts/generate_instruction.md).

    Input: runs/<run>/source/. Output: runs/<run>/generate/ with instruction_positive, the model,
    the prompt hash and, for a row whose call failed, generate_error. Every response is cached.
    """,
)
_register_llm_stage(
    "mine",
    """Mine passage negatives (BM25/dense, mine.retrieval) and poison each row (prompts/poison.md).

    Input: runs/<run>/generate/. Output: runs/<run>/mine/ with mined_negatives, instruction_negative,
    hard_negative_document_1, query_negative, hard_negative_document_2. One LLM call per row.
    """,
)
_register_llm_stage(
    "verify",
    """Pre-filter, then judge every candidate on every check (prompts/judge.md; default o3-mini).

    Input: runs/<run>/mine/. Output: runs/<run>/verify/ (all rows with verdicts and reasons),
    verify/accepted/ and verify/rejected/ (with the failed checks). One LLM call per judged row.
    """,
)


@app.command()
def write(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    version: Optional[str] = typer.Option(None, "--version", help="Release version (default: write.version)."),
    bump: Optional[str] = typer.Option(None, "--bump", help="patch | minor | major: the next version."),
    st_export: Optional[bool] = typer.Option(None, "--st-export/--no-st-export", help="Also write anchor/positive/negative files for sentence-transformers."),
    verify_dir: Optional[Path] = typer.Option(None, "--verify", help="Only check a written release: every checksum and row count."),
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Write the accepted rows as a versioned release (Parquet shards, manifest, dataset card).

    Output: releases/<name>/<version>/ with data/<split>-NNNNN-of-NNNNN.parquet, manifest.json (sha256
    and rows of every shard, config, models, prompt hashes, tokens, cost) and README.md with plots.
    A version is immutable: identical content is a no-op, different content is refused (use --bump
    or a new --version). `--verify DIR` checks every checksum and row count of a written release.
    """
    if verify_dir is not None:
        from pipeline.release import verify_release
        from pipeline.progress import console

        report = verify_release(verify_dir)
        console.print(f"[green]ok[/]: {report.summary()}")
        return
    if bump is not None and bump not in ("patch", "minor", "major"):
        raise InfirError(f"--bump {bump!r}: expected patch, minor or major")
    from pipeline.stages.common import save_effective_config
    from pipeline.stages.write import run_write

    cfg = _config(config, run, set_, **{"write.st_export": st_export})
    run_write(cfg, version=version, bump=bump)
    save_effective_config(cfg)


@app.command()
def publish(
    release: Path = typer.Argument(..., help="A release directory, e.g. releases/inf-ir-sample/1.0.0."),
    repo: str = typer.Option(..., "--repo", help="Hugging Face dataset repo id, e.g. org/name."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded; no network."),
) -> None:
    """Publish a release to a Hugging Face dataset repo, as one commit tagged with the version.

    The token comes from HF_TOKEN or the huggingface_hub login cache and is never written anywhere.
    A version tag that already exists is refused."""
    from pipeline.progress import console
    from pipeline.release import publish_release

    result = publish_release(release, repo, endpoint=endpoint, dry_run=dry_run, private=private)
    if dry_run:
        for path, size in result.files:
            console.print(f"  {path}  ({size:,} bytes)")
        console.print(
            f"dry run: {len(result.files)} file(s), {result.total_bytes:,} bytes would be uploaded to {repo} as {result.version}"
        )
    else:
        console.print(f"[green]published[/] {result.version} to {repo}: commit {result.commit_oid}, tag {result.tag}")


@app.command()
def train(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    release: Optional[Path] = typer.Option(None, "--release", help="Release to train on (default: this run's)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model: a sentence-transformers path (default: bundled all-MiniLM-L6-v2)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    set_: Optional[list[str]] = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Fine-tune on the release's train split and compare base vs fine-tuned on its test split.

    Three (text, passage) pairs per row, (Q+ I+ -> P+), (Q+ I- -> HN1), (Q- I+ -> HN2), each pair's
    passage a hard negative of the other two, plus in-batch negatives (MultipleNegativesRankingLoss).
    Output: runs/<run>/train/ (model/, train_log.json, eval/compare.{json,md,png}): nDCG@10, MRR@10,
    p-MRR (FollowIR, as MTEB computes it) and the no-instruction ablation.
    """
    from pipeline.stages.train import run_train

    cfg = _config(config, run, set_, **{"train.model": model, "train.epochs": epochs,
                                        "train.batch_size": batch_size, "train.seed": seed})
    run_train(cfg, force=force, release=release)


@app.command("eval")
def eval_(
    model: Optional[str] = typer.Argument(None, help="A sentence-transformers model path (default: bundled MiniLM)."),
    release: Optional[Path] = typer.Option(None, "--release", help="An infir release directory."),
    beir: Optional[Path] = typer.Option(None, "--beir", help="A BEIR-layout dataset whose queries carry an `instruction`."),
    split: str = typer.Option("test", "--split"),
    template: str = typer.Option("{query} {instruction}", "--template", help="How query and instruction are joined (as in training)."),
) -> None:
    """Evaluate any sentence-transformers model on a release's split or on a BEIR-layout dataset.

    Release: nDCG@10, MRR@10, p-MRR and the no-instruction ablation. BEIR: nDCG@10 and MRR@10 with and
    without the queries' instructions. Prints JSON.
    """
    import json

    from pipeline.train import evaluate_beir, evaluate_release

    if (release is None) == (beir is None):
        raise InfirError("give exactly one of --release DIR or --beir DIR")
    if release is not None:
        result = evaluate_release(model, release, split, template)
    else:
        result = evaluate_beir(model, beir, split, template)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def build(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    backend: Optional[str] = BackendOpt,
    max_cost_usd: Optional[float] = MaxCostOpt,
    concurrency: Optional[int] = ConcurrencyOpt,
    mode: Optional[str] = ModeOpt,
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage (e.g. verify)."),
    set_: Optional[list[str]] = SetOpt,
    force: bool = ForceOpt,
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Run only `source` (no LLM), then estimate the LLM stages' calls, tokens and cost; send nothing.",
    ),
) -> None:
    """Run every stage in order (source, generate, mine, verify, write, train); finished ones are skipped."""
    from pipeline.stages.common import save_effective_config
    from pipeline.stages.registry import ORDER, STAGES

    if until is not None and until not in ORDER:
        raise InfirError(f"--until {until!r}: expected one of {', '.join(ORDER)}")
    cfg = _config(config, run, set_, **_llm_flags(backend, max_cost_usd, concurrency, mode))
    stages = ORDER[: ORDER.index(until) + 1] if until else ORDER
    if dry_run:
        from pipeline.stages.estimate import dry_run as estimate

        STAGES["source"](cfg, force=force)  # free, and the estimate needs its rows
        estimate(cfg, stages)
        return
    for stage in stages:
        STAGES[stage](cfg, force=force)
        save_effective_config(cfg)  # after each stage: a process refused by a stage lock writes nothing


@app.command()
def status(run_path: Path = typer.Argument(..., help="A run directory, e.g. runs/sample.")) -> None:
    """Per-stage progress of a run: finished or not, rows, LLM calls, tokens and cost."""
    from pipeline.status import print_status

    print_status(run_path)


@cache_app.command("stats")
def cache_stats(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Entries, hits and size of the LLM response cache (llm.cache_path)."""
    from pipeline.llm.cache import Cache
    from pipeline.progress import print_summary

    cfg = _config(config, None, set_)
    path = Path(cfg.llm.cache_path)
    if not path.exists():
        raise InfirError(f"{path}: no cache yet (nothing has been generated with this config)")
    stats = Cache(path).stats()
    print_summary("LLM cache", [(k, v) for k, v in stats.items()])


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="A run directory (runs/<run>), or two to compare side by side."),
    out: Optional[Path] = typer.Option(None, "--out", help="Comparison page (default: runs/<a>/compare-<b>.html)."),
    browse_rows: int = typer.Option(2000, "--browse-rows", help="Rows the page's browser holds (a seeded sample beyond that)."),
    hardness_rows: int = typer.Option(500, "--hardness-rows", help="Rows embedded for the hardness measures (a seeded sample beyond that)."),
    hardness_seconds: float = typer.Option(30.0, "--hardness-seconds", help="Stop embedding after this many seconds (0: no limit); the page says how many rows it covers."),
    seed: int = typer.Option(13, "--seed", help="Seed of both samples."),
    hardness: bool = typer.Option(True, "--hardness/--no-hardness", help="Embed rows with the bundled MiniLM for the hardness measures."),
) -> None:
    """A self-contained HTML page (runs/<run>/report.html, opens offline) and report.json of a run:
    the funnel, cost, quality measures over every row, and a row browser. Two runs: side by side."""
    from pipeline.progress import console
    from pipeline.report import ReportOptions, write_comparison, write_report

    if len(runs) > 2:
        raise InfirError("give one run directory, or two to compare")
    for o, name in ((browse_rows, "--browse-rows"), (hardness_rows, "--hardness-rows")):
        if o < 0:
            raise InfirError(f"{name} {o}: expected a number >= 0")
    opts = ReportOptions(browse_rows=browse_rows, hardness_rows=hardness_rows, hardness_seconds=hardness_seconds,
                         seed=seed, hardness=hardness)
    if len(runs) == 2:
        path, _ = write_comparison(runs[0], runs[1], opts, out)
    else:
        path, rep = write_report(runs[0], opts)
        console.print(f"{rep['rows']:,} rows, {rep['funnel']['status']['accepted']:,} accepted; {rep['seconds']:.1f} s")
    console.print(f"[green]report[/]: {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """typer 0.2x raises from its own copy of click (typer._click): catch both copies."""
    found = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored

        found.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(found)


_ABORT, _USAGE, _EXIT = (_click_exceptions(n) for n in ("Abort", "ClickException", "Exit"))


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        app(args=argv, standalone_mode=False)
    except InfirError as e:
        if _state["debug"]:
            raise
        typer.secho(f"error: {e}", err=True, fg="red")
        return 2
    except (*_ABORT, KeyboardInterrupt):
        typer.secho("interrupted; rerun the same command to resume", err=True, fg="yellow")
        return 130
    except _USAGE as e:
        e.show()
        return e.exit_code
    except _EXIT as e:
        return e.exit_code
    except OSError as e:  # the machine's answer (permissions, a full disk, a missing folder): the user's to fix
        if _state["debug"] or debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        typer.secho(f"error: {where}{e.strerror or e}", err=True, fg="red")
        return 2
    except Exception as e:  # a bug: one line for the user, the traceback behind --debug
        if _state["debug"] or debug:
            raise
        typer.secho(f"internal error: {type(e).__name__}: {e} (rerun with --debug for details)", err=True, fg="red")
        return 1
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
