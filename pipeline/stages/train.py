"""`infir train`: fine-tune a sentence-transformers model on the run's release, then evaluate
instruction following (nDCG@10, MRR@10, p-MRR, instruction ablation) base vs fine-tuned."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline.errors import InfirError
from pipeline.extras import require_extra
from pipeline.fileio import sha256_file
from pipeline.progress import console, format_duration, plain_lines, progress_bar
from pipeline.runner import watch
from pipeline.runner.shape import Context, Option, Stage
from pipeline.store import read_success


class Train(Stage):
    name = "train"
    section = "train"
    redo_on_change = True  # a new release or new settings: train again
    make_help = "stage 6: fine-tune MiniLM and evaluate instruction following"
    doc = """Fine-tune on the release's train split and compare base vs fine-tuned on its test split.

    Three (text, passage) pairs per row, (Q+ I+ -> P+), (Q+ I- -> HN1), (Q- I+ -> HN2), each pair's
    passage a hard negative of the other two, plus in-batch negatives (MultipleNegativesRankingLoss).
    Output: runs/<run>/train/ (model/, train_log.json, eval/compare.{json,md,png}): nDCG@10, MRR@10,
    p-MRR (FollowIR, as MTEB computes it) and the no-instruction ablation.
    """
    options = (
        Option("--release", "release", Path, "Release to train on (default: this run's)."),
        Option("--model", "model", str, "Base model: a sentence-transformers path (default: bundled all-MiniLM-L6-v2).",
               key="train.model"),
        Option("--epochs", "epochs", int, "", key="train.epochs"),
        Option("--batch-size", "batch_size", int, "", key="train.batch_size"),
        Option("--seed", "seed", int, "", key="train.seed"),
    )

    def release(self, ctx: Context) -> Path:
        if ctx.options.get("release"):
            return Path(ctx.options["release"])
        success = read_success(ctx.upstream_dir)
        if success is None:
            raise InfirError(f"{ctx.upstream_dir}: no release written for this run; run `infir {ctx.upstream_dir.name}` first")
        path = Path(success["summary"]["release"])
        if not (path / "manifest.json").is_file():
            raise InfirError(f"{path}: release not found (moved or deleted?); rerun `infir {ctx.upstream_dir.name}`")
        return path

    def input_fingerprint(self, ctx: Context) -> str:
        from pipeline.release.paths import release_files

        release = self.release(ctx)
        release_files(release)  # no symlink in it (the manifest's included): nothing outside it is read
        return sha256_file(release / "manifest.json")

    def on_skip(self, ctx: Context, success: dict) -> None:
        console.print("[green]train[/]: already complete for this release and settings (--force redoes it)")
        console.print(success["summary"]["markdown"])

    def run(self, ctx: Context) -> dict:
        from pipeline.release import verify_release

        release, settings, out = self.release(ctx), ctx.settings, ctx.out.dir
        # Before the earlier model is removed and anything is trained: a shard changed since it was
        # written, or a path leading outside the release, is one line (exit 2), never a model.
        verify_release(release)
        require_extra("train", "infir train")
        from pipeline.train.check import training_check

        for p in out.iterdir():  # training is not resumable mid-way; a partial model is never kept
            if p.name not in (".lock", "_STATE.json"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        steps = _Steps()
        interval = ctx.cfg.run.progress_interval_s
        with progress_bar("train", None) as (bar, task), plain_lines(steps.line, interval, ctx.quiet or watch.QUIET):

            def on_step(label: str, info: dict) -> None:
                steps.update(label, info)
                bar.update(task, description=f"train {label}", completed=info.get("step", 0),
                           total=info.get("max_steps"),
                           info=f"loss {info.get('loss', float('nan')):.4f}" if info.get("loss") is not None else "")

            report = training_check(release, out, settings, progress=on_step)
        primary = report["training"][report["primary"]]
        return {
            "release": str(release),
            "rows": primary["rows_used"],
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

    def print_summary(self, ctx: Context, summary: dict) -> None:
        console.print(summary["markdown"])


class _Steps:
    """The latest optimizer step of the training under way, as a plain progress line."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.label, self.info, self.label_t0 = "", {}, self.t0

    def update(self, label: str, info: dict) -> None:
        if label != self.label:
            self.label, self.label_t0 = label, time.monotonic()
        self.info = info

    def line(self) -> str:
        now = time.monotonic()
        elapsed = f"elapsed {format_duration(now - self.t0)}"
        step, total = self.info.get("step", 0), self.info.get("max_steps")
        if not self.label:
            return f"train: loading the model and the release | {elapsed}"
        parts = [f"train {self.label}: step {step:,}/{total:,}" if total else f"train {self.label}: step {step:,}"]
        if total and step >= total:
            parts.append("trained; evaluating or starting the next training")
        elif total and step:
            parts.append(f"ETA of this training {format_duration((now - self.label_t0) / step * (total - step))}")
        if self.info.get("loss") is not None:
            parts.append(f"loss {self.info['loss']:.4f}")
        return " | ".join([*parts, elapsed])


STAGE = Train()
