"""`infir`: one subcommand per stage, plus `build` and `status`.

The CLI only parses flags into config overrides and calls stage functions. Errors reach the
user as one line and a non-zero exit (the statuses: `exit_status.py`); `--debug` shows the traceback.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.config import load_config, parse_value
from pipeline.errors import InfirError

app = typer.Typer(
    name="infir",
    help="Build instruction-following retrieval training corpora (InF-IR style), stage by stage.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect the LLM response cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_state: dict[str, Any] = {"debug": False, "prompts": None}

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config (TOML). Default: the bundled sample config.")
RunOpt = typer.Option(None, "--run", help="Run name (a folder under run.runs_dir). Overrides run.name.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set source.sample_queries=500 (repeatable).")
ForceOpt = typer.Option(False, "--force", help="Redo the stage even if it finished, discarding its output.")


def _print_version(value: bool) -> None:
    if value:
        from pipeline.version import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", help="Folder of your own prompt files (run.prompts_dir); default: the bundled prompts."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail: retries and repairs of LLM requests."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors: no progress lines, no warnings."),
) -> None:
    _state["debug"] = debug
    _state["prompts"] = str(prompts) if prompts else None
    _set_verbosity(verbose, quiet)
    from pipeline.release.manifest import source_date_epoch

    # Checked before any command: libraries read it too (numpy's f2py, imported with scipy by the
    # retrieval and training code, converts it at import), and a bad value must be this one line.
    source_date_epoch()


def _set_verbosity(verbose: int, quiet: bool) -> None:
    """-q: errors only (no progress lines); default: warnings; -v: everything infir logs, retries
    and repairs of the LLM client included (it logs them at DEBUG)."""
    import logging

    from pipeline.runner import watch

    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.WARNING)
    log = logging.getLogger("pipeline")
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    watch.QUIET = quiet


def _overrides(sets: list[str] | None, **flags: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise InfirError(f"--set {item!r}: expected KEY=VALUE, e.g. --set source.sample_queries=500")
        key, raw = item.split("=", 1)
        if "\n" in item or "\r" in item:
            # TOML would read `1\nc.d=2` as the value 1 and silently drop the rest.
            raise InfirError(f"--set {item!r}: a value cannot span lines; give one --set per key")
        out[key.strip()] = parse_value(raw.strip())
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def _config(config: Optional[Path], run: Optional[str], sets: list[str] | None, **flags: Any):
    return load_config(config, _overrides(sets, **{"run.name": run, "run.prompts_dir": _state["prompts"]}, **flags))


BackendOpt = typer.Option(None, "--backend", help="LLM backend: offline (default, no key) or openai.")
ModelOpt = typer.Option(None, "--model", help="Model for this stage (overrides the config).")
MaxCostOpt = typer.Option(None, "--max-cost-usd", help="Stop cleanly (resumable) once this much is spent.")
ConcurrencyOpt = typer.Option(None, "--concurrency", help="LLM requests in flight at once.")
ModeOpt = typer.Option(
    None, "--mode", help="online (default) or batch: through the Batch API at batch prices, resumable (needs --backend openai)."
)
JsonOpt = typer.Option(False, "--json", help="With --dry-run: print the estimate as JSON on stdout (for scripts).")
DryRunOpt = typer.Option(
    False, "--dry-run", help="Estimate calls, tokens and cost (online and batch prices); send nothing."
)


def _llm_flags(backend, max_cost, concurrency, mode) -> dict[str, Any]:
    """The LLM options `build` and each LLM stage share, as config overrides."""
    return {"llm.backend": backend, "llm.max_cost_usd": max_cost, "llm.concurrency": concurrency, "llm.mode": mode}


def _param(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


_COMMON = [
    _param("config", ConfigOpt, Optional[Path]),
    _param("run", RunOpt, Optional[str]),
    _param("set_", SetOpt, Optional[list[str]]),
    _param("force", ForceOpt, bool),
]
_LLM = [
    _param("backend", BackendOpt, Optional[str]),
    _param("model", ModelOpt, Optional[str]),
    _param("max_cost_usd", MaxCostOpt, Optional[float]),
    _param("concurrency", ConcurrencyOpt, Optional[int]),
    _param("dry_run", DryRunOpt, bool),
    _param("json_", JsonOpt, bool),
    _param("mode", ModeOpt, Optional[str]),
]


def _option_param(o) -> inspect.Parameter:
    decls = [f"{o.flag}/{o.secondary}"] if o.secondary else [o.flag]
    annotation = Optional[list[o.type]] if o.multiple else Optional[o.type]
    return _param(o.dest, typer.Option(None, *decls, help=o.help), annotation)


def _finished(results: list, what: str) -> int:
    """The exit status of a finished build or stage (`runner.outcome`), its line on stderr."""
    from pipeline.runner.outcome import finished

    status, line = finished(results, what)
    if line:
        typer.secho(line, err=True, fg="yellow")
    return status


def _run_stage_command(stage, kw: dict[str, Any]) -> int | None:
    from pipeline.declaration import PIPELINE
    from pipeline.runner.run import run_stage
    from pipeline.runner.shape import LLMStage

    if stage.standalone({o.dest: kw.get(o.dest) for o in stage.options}):
        return
    flags: dict[str, Any] = {}
    for o in stage.options:
        if o.key is not None and kw.get(o.dest) is not None:
            v = kw[o.dest]
            flags[o.key] = [str(x) for x in v] if o.multiple else (str(v) if isinstance(v, Path) else v)
    if isinstance(stage, LLMStage):
        flags.update(_llm_flags(kw["backend"], kw["max_cost_usd"], kw["concurrency"], kw["mode"]))
        flags[f"{stage.section}.model"] = kw["model"]
    cfg = _config(kw["config"], kw["run"], kw["set_"], **flags)
    if isinstance(stage, LLMStage) and kw["dry_run"]:
        from pipeline.runner.estimate import dry_run as estimate

        estimate(PIPELINE, cfg, [stage.name], as_json=kw["json_"])
        return
    options = {o.dest: kw.get(o.dest) for o in stage.options if o.key is None}
    return _finished([run_stage(PIPELINE, stage.name, cfg, force=kw["force"], options=options)], stage.name)


def _register_stage(stage) -> None:
    """One subcommand per declared stage: the shared flags, the LLM flags for LLM stages, and the
    stage's own (`Stage.options`)."""
    from pipeline.runner.shape import LLMStage

    params = _COMMON + (_LLM if isinstance(stage, LLMStage) else []) + [_option_param(o) for o in stage.options]

    def command(**kw: Any) -> int | None:
        return _run_stage_command(stage, kw)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = stage.doc
    app.command(stage.name)(command)


def _register_pipeline() -> None:
    from pipeline.declaration import PIPELINE

    for stage in PIPELINE:
        _register_stage(stage)


_register_pipeline()


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
        console.print(
            f"[green]published[/] {result.version} to {repo}: {len(result.files)} file(s), {result.total_bytes:,} bytes "
            f"(large files by {result.transport}), commit {result.commit_oid}, tag {result.tag}"
        )


@app.command("eval")
def eval_(
    model: Optional[str] = typer.Argument(None, help="A sentence-transformers model path (default: bundled MiniLM)."),
    release: Optional[Path] = typer.Option(None, "--release", help="An infir release directory."),
    beir: Optional[Path] = typer.Option(None, "--beir", help="A BEIR-layout dataset whose queries carry an `instruction`."),
    followir: Optional[Path] = typer.Option(None, "--followir", help="A FollowIR-layout task folder (Robust04, Core17, News21)."),
    split: str = typer.Option("test", "--split"),
    template: str = typer.Option("{query} {instruction}", "--template", help="How query and instruction are joined (as in training)."),
    out: Path = typer.Option(Path("eval-report"), "--out", help="Folder for the report (eval-<kind>.json and .md)."),
    pool_sample: Optional[int] = typer.Option(None, "--pool-sample", help="Release only: passages sampled from the rest of the collection (default 10000)."),
    collection: Optional[Path] = typer.Option(None, "--collection", help="Release only: a BEIR corpus.jsonl to sample the pool from (default: the release's passages)."),
) -> None:
    """Evaluate any sentence-transformers model on a release split, a BEIR dataset or a FollowIR task.

    Release: nDCG@10, MRR@10, p-MRR and the no-instruction ablation over a pool of the split's passages,
    their mined negatives and a seeded sample of the collection. BEIR: nDCG@10 and MRR@10 with and without
    the queries' instructions. FollowIR: p-MRR as MTEB computes it, nDCG@5 and MAP@1000. Prints JSON and
    writes it with a Markdown table to --out.
    """
    from pipeline.extras import require_extra

    require_extra("train", "infir eval")
    from pipeline.train.eval_command import run_eval

    run_eval(model, release=release, beir=beir, followir=followir, split=split, template=template, out=out,
             pool_sample=pool_sample, collection=collection)


@app.command()
def build(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    backend: Optional[str] = BackendOpt,
    max_cost_usd: Optional[float] = MaxCostOpt,
    concurrency: Optional[int] = ConcurrencyOpt,
    mode: Optional[str] = ModeOpt,
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage (e.g. verify)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="local (default) or ray (a Ray task per shard; infir[ray])."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Ray cluster to join (auto, ray://head:10001); none: start a local Ray for the run."
    ),
    set_: Optional[list[str]] = SetOpt,
    force: bool = ForceOpt,
    json_: bool = JsonOpt,
    target_accepted: Optional[int] = typer.Option(
        None, "--target-accepted",
        help="Size the run for this many accepted rows from a cached pilot (see `infir plan`); refuses if the projection passes --max-cost-usd.",
    ),
    pilot: int = typer.Option(200, "--pilot", help="With --target-accepted: queries in the pilot."),
    stream: Optional[bool] = typer.Option(
        None, "--stream/--no-stream",
        help="Run the row stages at once, each chunk entering the next stage as soon as it is written "
             "(run.stream, default on); --no-stream: one stage after another. The same bytes either way.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Run only the stages before the first LLM stage (no LLM), then estimate the LLM stages' calls, tokens and cost; send nothing.",
    ),
) -> None:
    """Run every stage in pipeline order; finished ones are skipped. Exit status 3: finished with failed rows."""
    from pipeline.declaration import PIPELINE
    from pipeline.runner.build import run_build

    cfg = _config(config, run, set_, **_llm_flags(backend, max_cost_usd, concurrency, mode),
                  **{"run.executor": executor, "run.ray_address": ray_address, "run.stream": stream})
    results = run_build(PIPELINE, cfg, until, force=force, dry_run=dry_run, as_json=json_, target=target_accepted,
                        pilot=pilot, echo=lambda line: typer.echo(line, err=True))
    return _finished(results, "build")


@app.command("plan")
def plan_(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    backend: Optional[str] = BackendOpt,
    max_cost_usd: Optional[float] = MaxCostOpt,
    concurrency: Optional[int] = ConcurrencyOpt,
    target_accepted: int = typer.Option(..., "--target-accepted", help="Accepted rows wanted."),
    pilot: int = typer.Option(200, "--pilot", help="Queries in the pilot (run in runs/<run>-pilot, cached)."),
    set_: Optional[list[str]] = SetOpt,
    force: bool = ForceOpt,
    json_: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout."),
) -> None:
    """Size a run: a seeded pilot through every LLM stage (cached, never paid twice), then the source
    queries needed for N accepted rows and the projected cost online and in batch mode, with intervals."""
    import json

    from pipeline.declaration import PIPELINE
    from pipeline.runner.plan import describe, plan

    cfg = _config(config, run, set_, **_llm_flags(backend, max_cost_usd, concurrency, None))
    p = plan(PIPELINE, cfg, target_accepted, pilot, force=force)
    if json_:
        typer.echo(json.dumps(p.as_dict(), indent=2))
    else:
        for line in describe(p, cfg.llm.max_cost_usd):
            typer.echo(line)


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


@app.command("calibrate-judge")
def calibrate_judge(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = RunOpt,
    backend: Optional[str] = BackendOpt,
    rows: Optional[int] = typer.Option(None, "--rows", help="Sample size (default verify.calibration_rows, 200)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sample seed (default verify.calibration_seed)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="An audit folder (runs/<run>/audit/<name>): set the "
                                          "threshold against its people's labels, not the reasoning judge."),
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Calibrate the judge cascade: the first judge and the reasoning judge on a seeded sample of the
    rows verify would judge; prints each check's false-reject / false-accept rates (Wilson 95%
    intervals) and the threshold that keeps false rejects under verify.calibration_max_false_reject
    at the largest saving. Written to runs/<run>/calibration/judge.json, which verify then uses."""
    from pipeline.audit.verdicts import labelled_rows
    from pipeline.declaration import PIPELINE
    from pipeline.progress import console
    from pipeline.runner.calibrate import calibrate_judge as calibrate

    cfg = _config(config, run, set_, **{"llm.backend": backend})
    _, lines = calibrate(PIPELINE, cfg, rows=rows, seed=seed, labelled=labels and labelled_rows(labels))
    for line in lines:
        console.print(line)


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Folder for the new project (created if missing)."),
    prompts: bool = typer.Option(False, "--prompts", help="Also copy the bundled prompts there to edit (sets run.prompts_dir)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing config.toml."),
) -> None:
    """Start a project: DIR/config.toml, the bundled sample corpus in DIR/data/sample and, with
    --prompts, the prompts in DIR/prompts. Then: infir build --config DIR/config.toml"""
    from pipeline.init import init_project
    from pipeline.progress import console

    written = init_project(directory, prompts=prompts, force=force)
    for path in written:
        console.print(f"  wrote {path}")
    console.print(f"next: infir build --config {written[0]}")


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
    from pipeline.report.command import run_report

    run_report(runs, out, browse_rows=browse_rows, hardness_rows=hardness_rows, hardness_seconds=hardness_seconds,
               seed=seed, hardness=hardness)


@app.command()
def audit(
    args: list[str] = typer.Argument(..., metavar="RUN | score AUDIT_DIR",
                                     help="runs/<run> to draw and label, or `score runs/<run>/audit/<name>`."),
    rows: int = typer.Option(100, "--rows", help="Sample size: half accepted rows, the rest evenly over the rejected strata."),
    per_stratum: Optional[str] = typer.Option(None, "--per-stratum", help="Sizes per stratum instead, e.g. accepted=50,rejected_judge=20,rejected_first_judge=10,rejected_filter=20."),
    seed: int = typer.Option(13, "--seed", help="Sample seed."),
    name: Optional[str] = typer.Option(None, "--name", help="Audit name: runs/<run>/audit/<name>/ (default seed<seed>); an existing one is reused."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="Who labels (default: the login name)."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0: any free port)."),
) -> None:
    """People check a sample of the run: draws a stratified, seeded sample of verify's rows (accepted,
    rejected by the judge, by the first judge, by a filter) and serves a labelling page on 127.0.0.1
    (the URL, with its token, is printed; nothing opens by itself). `infir audit score DIR` writes
    DIR/audit.json: the judge's precision and false rejects with Wilson intervals (docs/audit.md)."""
    from pipeline.audit.command import run_audit

    run_audit(args, rows=rows, seed=seed, name=name, annotator=annotator, port=port, per_stratum=per_stratum)


def main(argv: list[str] | None = None) -> int:
    """Run `infir` with `argv` (default: sys.argv); the exit status. exit_status.py is handed the app:
    importing this package from there would be an import circle (tests/test_architecture.py)."""
    from pipeline.cli.exit_status import run_app

    return run_app(app, _state, argv)


def entrypoint() -> None:
    sys.exit(main())
