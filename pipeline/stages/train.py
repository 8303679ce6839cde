"""`infir train`: fine-tune a sentence-transformers model on the run's release, then evaluate
instruction following (nDCG@10, MRR@10, p-MRR, instruction ablation) base vs fine-tuned."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.errors import InfirError
from pipeline.progress import console, progress_bar
from pipeline.stages.common import StageResult, run_dir
from pipeline.store import identity_hash, read_success, write_json_atomic
from pipeline.store.ids import sha256_file
from pipeline.store.lock import StageLock


def release_of_run(rd: Path) -> Path:
    success = read_success(rd / "write")
    if success is None:
        raise InfirError(f"{rd / 'write'}: no release written for this run; run `infir write` first")
    path = Path(success["release"])
    if not (path / "manifest.json").is_file():
        raise InfirError(f"{path}: release not found (moved or deleted?); rerun `infir write`")
    return path


def run_train(cfg, force: bool = False, release: Path | None = None) -> StageResult:
    # Two trainings into one folder would mix their models: one process at a time per run.
    with StageLock(run_dir(cfg) / "train"):
        return _run_train(cfg, force, release)


def _run_train(cfg, force: bool, release: Path | None) -> StageResult:
    from pipeline.train.check import training_check

    rd = run_dir(cfg)
    release = Path(release) if release else release_of_run(rd)
    settings = cfg.train
    out = rd / "train"
    identity = {
        "release_manifest": sha256_file(release / "manifest.json"),
        "config_hash": identity_hash(settings),
    }
    done = read_success(out)
    if done and not force and all(done.get(k) == v for k, v in identity.items()):
        console.print(f"[green]train[/]: already complete for this release and settings (--force redoes it)")
        console.print(done["summary"]["markdown"])
        return StageResult("train", True, done)
    for p in out.iterdir():  # training is not resumable mid-way; a partial model is never kept
        if p.name != ".lock":  # the lock held above
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    with progress_bar("train", None) as (bar, task):

        def on_step(label: str, info: dict) -> None:
            bar.update(task, description=f"train {label}", completed=info.get("step", 0), total=info.get("max_steps"),
                       info=f"loss {info.get('loss', float('nan')):.4f}" if info.get("loss") is not None else "")

        report = training_check(release, out, settings, progress=on_step)
    primary = report["training"][report["primary"]]
    summary = {
        "release": str(release),
        "train_pairs": primary["train_pairs"],
        "steps": primary["steps"],
        "final_loss": primary["final_loss"],
        "runtime_s": primary["runtime_s"],
        "training": report["training"],
        "pool_size": report["pool_size"],
        "metrics": report["models"],
        "delta": report["delta"],
        "markdown": report["markdown"],
    }
    success = {"stage": "train", **identity, "rows": primary["rows_used"], "summary": summary}
    write_json_atomic(success, out / "_SUCCESS.json")
    console.print(report["markdown"])
    return StageResult("train", False, success)
