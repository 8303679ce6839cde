"""`infir calibrate-judge`: run the stage that owns a judge cascade's calibration (`calibrate(ctx)`,
the verify stage) on its upstream's rows, with the run's LLM client. The stage is found by what it
can do, not by name, so the runner still names no stage.

With `--labels runs/<run>/audit/<name>` (`calibrate_from_labels`), people's "valid" labels of an
audit's rows take the reasoning judge's place in the same search, against the first-judge
confidences verify recorded for those rows; no request is sent."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InfirError
from pipeline.runner import llm
from pipeline.runner.pipeline import Pipeline
from pipeline.runner.llm import llm_prepare
from pipeline.runner.run import context


def calibrate_judge(pipe: Pipeline, cfg, rows: int | None = None, seed: int | None = None,
                    labelled=None) -> tuple[dict, list[str]]:
    """(the calibration written to the run, its lines as `status` shows them). `labelled`: an audit's
    labelled rows (`--labels`), which then stand in for the reasoning judge (`calibrate_from_labels`)."""
    if labelled is not None:
        return calibrate_from_labels(pipe, cfg, labelled, rows=rows, seed=seed)
    stage = next((s for s in pipe.llm_stages() if hasattr(s, "calibrate")), None)
    if stage is None:
        raise InfirError("no stage of this pipeline has a judge cascade to calibrate")
    ctx = context(pipe, stage, cfg)
    llm_prepare(ctx, stage)
    ctx.upstream_success()  # a clear error when the upstream has not run
    ctx.client = llm.make_client(cfg)
    try:
        cal = stage.calibrate(ctx, rows=rows, seed=seed)
    finally:
        ctx.client.close()
    return cal, stage.status_lines(ctx.run_dir)


# -- against people's labels (`infir calibrate-judge --labels runs/<run>/audit/<name>`) -----------

#: Fewest labelled rows with a first-judge confidence the threshold search is run on: below it, one
#: row moves the false-reject rate by more than 5 points, wider than any sensible target.
MIN_LABELLED_ROWS = 20
LABELS = "labels"


def _first_judgments(stage_dir, ids: set[str]) -> dict[str, tuple]:
    """row id -> (first-judge verdicts, confidence source, first-judge model) from the stage's output,
    for the ids asked; rows the first judge never answered (no cascade, a filter rejected them) are absent."""
    import pyarrow.parquet as pq

    out = {}
    cols = ["id", "first_judge_verdicts", "first_judge_confidence", "first_judge_model"]
    for path in sorted(stage_dir.glob("part-*.parquet")):
        try:
            f = pq.ParquetFile(path)
            if any(c not in f.schema_arrow.names for c in cols):
                return {}  # written without the cascade's columns: no row has a confidence
            table = f.read(columns=cols)
        except Exception as e:  # pyarrow raises several kinds for a damaged file: name the file
            raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun {stage_dir.name} with --force") from None
        for r in table.to_pylist():
            if r["id"] in ids and r["first_judge_verdicts"]:
                out[r["id"]] = (r["first_judge_verdicts"], r["first_judge_confidence"], r["first_judge_model"])
    return out


def _weighted(pairs: list, weights: list[float], threshold: float) -> dict:
    """At `threshold`, the run-wide estimates from a stratified sample: each labelled row stands for
    `weight` rows of its stratum, so oversampled rejected rows do not count more than they are."""
    valid_w = sum(w for (_, failed), w in zip(pairs, weights) if not failed)
    fr_w = sum(w for (f, failed), w in zip(pairs, weights) if not failed and f.rejects(threshold))
    through_w = sum(w for (f, _), w in zip(pairs, weights) if not f.rejects(threshold))
    total = sum(weights)
    return {"false_reject": round(fr_w / valid_w, 4) if valid_w else None,
            "survival": round(through_w / total, 4) if total else None,
            "saving": round(1 - through_w / total, 4) if total else None}


def calibrate_from_labels(pipe: Pipeline, cfg, labelled, rows: int | None = None,
                          seed: int | None = None) -> tuple[dict, list[str]]:
    """The cascade's threshold set against people's labels: the same search as against the reasoning
    judge (`cascade.calibrate`), with a labelled row's "valid" standing in for the judge accepting it.
    `labelled`: the audit's rows (pipeline/audit/verdicts.py `LabelledRows`). No LLM request is sent."""
    from pipeline.fileio import write_json_atomic
    from pipeline.generation import cascade

    stage = next((s for s in pipe.llm_stages() if hasattr(s, "calibrate")), None)
    if stage is None:
        raise InfirError("no stage of this pipeline has a judge cascade to calibrate")
    ctx = context(pipe, stage, cfg)
    llm_prepare(ctx, stage)
    if rows is not None or seed is not None:
        raise InfirError("--labels uses the audit's labelled rows: drop --rows and --seed")
    where = f"audit {labelled.name}"
    if Path(labelled.path).resolve().parent != (ctx.run_dir / "audit").resolve():
        raise InfirError(f"{labelled.path}: not an audit of run {cfg.run.name} ({ctx.run_dir / 'audit'}/<name>); "
                         "pass --run (or --config) of the run it audits")
    if not labelled.valid:
        raise InfirError(f"{where}: no labelled rows yet; label some first (infir audit runs/<run>)")
    stage_dir = ctx.run_dir / stage.name
    if not (stage_dir / "_SUCCESS.json").is_file():
        raise InfirError(f"{stage_dir}: {stage.name} has not finished; the labels are checked against its rows' "
                         "first-judge confidences")
    firsts = _first_judgments(stage_dir, set(labelled.valid))
    if not firsts:
        raise InfirError(
            f"{where}: none of its {len(labelled.valid)} labelled rows has a first-judge confidence in {stage_dir} "
            "(verify ran without the cascade, or the labelled rows were all rejected by a filter); "
            "run verify with verify.cascade = true, then audit its rows")
    _, first_model, _ = stage.first_judge(ctx)
    others = sorted({m for _, _, m in firsts.values() if m != first_model})
    if others:
        raise InfirError(f"{where}: its rows were first judged by {', '.join(others)}, but verify.first_model is "
                         f"{first_model}: a threshold is only good for the model whose confidences set it")
    rows = sorted(firsts)  # a fixed order: the same labels give the same file
    if len(rows) < MIN_LABELLED_ROWS:
        raise InfirError(f"{where}: {len(rows)} labelled row(s) with a first-judge confidence; at least "
                         f"{MIN_LABELLED_ROWS} are needed to set a threshold (label more rows)")
    if not any(labelled.valid[r] for r in rows):
        raise InfirError(f"{where}: no labelled row with a first-judge confidence is valid; the false-reject "
                         "rate the threshold is set by needs valid rows (label more rows)")
    pairs = [(cascade.FirstJudgment(firsts[r][0], firsts[r][1] or "field"), [] if labelled.valid[r] else [LABELS])
             for r in rows]
    per_stratum = {s: sum(1 for r in rows if labelled.stratum[r] == s) for s in set(labelled.stratum.values())}
    weights = [labelled.population.get(labelled.stratum[r], 0) / per_stratum[labelled.stratum[r]] for r in rows]
    s = stage.settings(cfg)
    cal = cascade.calibrate(pairs, s.calibration_max_false_reject)
    # Survival and saving as the run would see them (the dry run reads the recommendation's); the
    # false-reject counts stay the sample's, with their Wilson intervals, beside the reweighted rate.
    for point in (cal["at_recommended"], *cal["curve"]):
        w = _weighted(pairs, weights, point["threshold"])
        point.update(weighted_false_reject=w["false_reject"], sample_survival=point["survival"],
                     survival=w["survival"], saving=w["saving"])
    cal.update(
        # People answer four questions, not the judge's nine checks: no per-check figures, and the
        # unweighted sample's points would misstate the run's survival (the dry run reads them).
        per_check={}, points=[],
        against=LABELS, labels=labelled.name, annotators=len(labelled.annotators),
        first_model=first_model, judge_model=f"people ({where})", seed=None, sampled=len(labelled.valid),
        left_out=len(labelled.valid) - len(rows), cost_usd=0.0,
    )
    path = cascade.calibration_path(ctx.run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cal, path, sort_keys=False)
    return cal, [f"note: {n}" for n in labelled.notes] + label_lines(cal)


def label_lines(cal: dict) -> list[str]:
    """`status`'s lines of a calibration against labels, with the run-wide (reweighted) estimates."""
    from pipeline.generation import cascade

    lines = cascade.summary_lines(cal)
    at = cal["at_recommended"]
    rate = at["weighted_false_reject"]
    lines[0] = (f"judge cascade calibration: {cal['first_model']} against people's labels (audit {cal['labels']}, "
                f"{cal['annotators']} annotator(s)) on {cal['rows']} labelled rows with a first-judge confidence")
    lines.append(f"  reweighted to the run by the audit's sampling weights: false rejects "
                 f"{'n/a' if rate is None else f'{rate:.1%}'} (savings above are reweighted too)")
    return lines
