"""Contrastive fine-tuning of a sentence-transformers model on an InF-IR release.

Scheme (InF-IR): three (text, passage) pairs per row, (Q+ I+ -> P+), (Q+ I- -> HN1), (Q- I+ -> HN2);
for each pair the row's other two passages are hard negatives, plus in-batch negatives
(MultipleNegativesRankingLoss over anchor, positive, negative_1, negative_2[, mined...]).
``BatchSamplers.NO_DUPLICATES`` keeps any repeated text (query or passage, across columns) out of
one batch, so the three pairs of a row always land in different batches and no passage is
ever both a positive and an in-batch negative of the same batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import InfirError
from pipeline.fileio import write_json_atomic
from pipeline.train.data import TrainingPairs, build_training_pairs, load_release_split
from pipeline.train.settings import TrainSettings, resolve_model

__all__ = ["TrainResult", "train", "load_model", "build_trainer"]

ProgressFn = Callable[[dict[str, Any]], None]

MODEL_DIRNAME = "model"
LOG_FILENAME = "train_log.json"
SETTINGS_FILENAME = "train_settings.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    model_dir: Path
    log_path: Path
    settings_path: Path
    rows_used: int
    rows_skipped: int
    train_pairs: int
    num_negatives: int
    steps: int
    final_loss: float | None
    mean_loss: float | None
    runtime_s: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def load_model(model: Any = None, max_seq_length: int | None = None, device: str = "cpu"):
    """A :class:`SentenceTransformer` from a path/name (``None`` -> bundled MiniLM) or the object itself."""
    if model is not None and not isinstance(model, (str, Path)) and callable(getattr(model, "encode", None)):
        st = model  # a loaded SentenceTransformer, or any object with a sentence-transformers style encode()
    else:
        from sentence_transformers import SentenceTransformer

        name = resolve_model(model)
        try:
            with quiet_progress():
                st = SentenceTransformer(name, device=device)
        except Exception as exc:  # missing path, not a model, offline hub miss ...
            raise InfirError(f"cannot load sentence-transformers model {name!r}: {exc}") from exc
    if max_seq_length is not None and hasattr(st, "max_seq_length"):
        st.max_seq_length = max_seq_length
    return st


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' own progress bars (weight loading, shard writing); restore after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed every RNG and switch torch to deterministic kernels; restore the global switch after."""
    import torch
    from transformers import set_seed

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _training_args(settings: TrainSettings, tmp_dir: str):
    """SentenceTransformerTrainingArguments across sentence-transformers/transformers versions."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    try:  # sentence-transformers >= 6
        from sentence_transformers.base.sampler import BatchSamplers
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.training_args import BatchSamplers

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    kwargs: dict[str, Any] = dict(
        output_dir=tmp_dir,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        data_seed=settings.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        optim="adamw_torch",
    )
    if "warmup_ratio" in names:  # transformers < 5
        kwargs["warmup_ratio"] = settings.warmup_ratio
    else:  # transformers >= 5: a float in [0, 1) is a ratio of total steps
        kwargs["warmup_steps"] = float(settings.warmup_ratio)
    return SentenceTransformerTrainingArguments(**kwargs)


def _make_loss(model, settings: TrainSettings):
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

    if settings.loss == "cached_mnrl":
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=settings.mini_batch_size)
    return MultipleNegativesRankingLoss(model)


def _progress_callback(progress: ProgressFn):
    from transformers import TrainerCallback

    class _Cb(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                progress(
                    {
                        "step": state.global_step,
                        "max_steps": state.max_steps,
                        "epoch": logs.get("epoch", state.epoch),
                        "loss": float(logs["loss"]),
                        "learning_rate": logs.get("learning_rate"),
                    }
                )

    return _Cb()


def _atomic_json(path: Path, obj: Any) -> None:
    write_json_atomic(obj, path, sort_keys=False)


def _versions() -> dict[str, str]:
    import datasets
    import sentence_transformers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "datasets": datasets.__version__,
    }


def build_trainer(model, columns: dict[str, list[str]], settings: TrainSettings, tmp_dir: str, progress: ProgressFn | None = None):
    """The configured :class:`SentenceTransformerTrainer` (NO_DUPLICATES batches, seeded, CPU, no saving)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_callback import PrinterCallback

    trainer = SentenceTransformerTrainer(
        model=model,
        args=_training_args(settings, tmp_dir),
        train_dataset=Dataset.from_dict(columns),
        loss=_make_loss(model, settings),
        callbacks=[_progress_callback(progress)] if progress else None,
    )
    trainer.remove_callback(PrinterCallback)  # no raw log dicts on stdout; `progress` reports steps
    return trainer


def _output_dir(out_dir: str | Path | None, settings: TrainSettings, overwrite: bool) -> Path:
    """``out_dir``, else ``settings.output_dir``; refuses one that already holds a model unless ``overwrite``."""
    target = out_dir if out_dir is not None else settings.output_dir
    if target is None:
        raise InfirError("train: no output directory (pass out_dir or set output_dir)")
    out = Path(target)
    model_dir = out / MODEL_DIRNAME
    if model_dir.exists() and not overwrite:
        raise InfirError(f"{model_dir} already exists (use overwrite to replace it)")
    return out


def _training_pairs(release_dir: str | Path, settings: TrainSettings) -> TrainingPairs:
    """The release's train split as (text, passage) pair columns; raises if no row is usable."""
    mined = settings.use_mined_negatives
    rows = load_release_split(
        release_dir, "train", columns=("mined_negatives",) if mined else (), max_rows=settings.max_rows
    )
    pairs = build_training_pairs(
        rows, settings.template, use_mined_negatives=mined, num_mined_negatives=settings.num_mined_negatives
    )
    if len(pairs) == 0:
        raise InfirError(f"{release_dir}: no usable train rows ({pairs.rows_skipped} skipped: {pairs.skip_reasons})")
    return pairs


def _fit(
    model_name: str, pairs: TrainingPairs, settings: TrainSettings, out: Path, progress: ProgressFn | None
) -> tuple[list[dict[str, Any]], int]:
    """Train and save the model to ``out/model``; the trainer's log history and its global step."""
    with (
        quiet_progress(),
        _deterministic(settings.seed),
        tempfile.TemporaryDirectory(prefix=".trainer-", dir=out) as tmp,
    ):
        model = load_model(model_name, max_seq_length=settings.max_seq_length)
        trainer = build_trainer(model, pairs.columns, settings, tmp, progress)
        trainer.train()
        history = list(trainer.state.log_history)
        steps = int(trainer.state.global_step)
        _save_model(model, out)
        del trainer
    return history, steps


def _save_model(model, out: Path) -> None:
    """Save beside ``out/model``, then move it there, so ``out/model`` is never a half-written model."""
    model_dir = out / MODEL_DIRNAME
    staged = out / f".model.tmp-{os.getpid()}"
    if staged.exists():
        shutil.rmtree(staged)
    model.save(str(staged))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(staged, model_dir)


def _step_log(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per logged optimizer step (the history also holds the end-of-training summary)."""
    return [
        {
            "step": int(h["step"]),
            "epoch": h.get("epoch"),
            "loss": float(h["loss"]),
            "learning_rate": h.get("learning_rate"),
            "grad_norm": float(h["grad_norm"]) if h.get("grad_norm") is not None else None,
        }
        for h in history
        if "loss" in h and "step" in h
    ]


def _write_log(
    out: Path, step_log: list[dict[str, Any]], history: list[dict[str, Any]], steps: int, runtime: float
) -> Path:
    """Loss per step, plus the totals of the trainer's end-of-training entry."""
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    log_path = out / LOG_FILENAME
    _atomic_json(
        log_path,
        {
            "steps": step_log,
            "global_steps": steps,
            "train_runtime_s": summary.get("train_runtime"),
            "train_loss": summary.get("train_loss"),
            "wall_s": round(runtime, 3),
        },
    )
    return log_path


def _write_settings(
    out: Path, settings: TrainSettings, model_name: str, release_dir: str | Path, pairs: TrainingPairs,
    torch_threads: int,
) -> Path:
    """The effective settings, data counts and library versions beside the model."""
    settings_path = out / SETTINGS_FILENAME
    _atomic_json(
        settings_path,
        {
            "settings": settings.model_dump(mode="json"),
            "resolved_model": model_name,
            "release_dir": str(release_dir),
            "rows_used": pairs.rows_used,
            "rows_skipped": pairs.rows_skipped,
            "skip_reasons": pairs.skip_reasons,
            "train_pairs": len(pairs),
            "columns": list(pairs.columns),
            "torch_threads": torch_threads,
            "versions": _versions(),
        },
    )
    return settings_path


def train(
    release_dir: str | Path,
    out_dir: str | Path | None,
    settings: TrainSettings | None = None,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune ``settings.model`` on ``release_dir``'s train split; write to ``out_dir``.

    Writes ``out_dir/model/`` (the final model only; no checkpoints), ``out_dir/train_log.json``
    (loss per step) and ``out_dir/train_settings.json`` (effective settings, data counts,
    library versions). ``progress`` gets one dict per optimizer step
    (step, max_steps, epoch, loss, learning_rate). Same settings + data -> same model up to
    floating-point noise (seeded RNGs, deterministic torch kernels, seeded batch sampler).
    Raises :class:`InfirError` for a bad release, an unloadable model, or an existing model
    directory without ``overwrite``.
    """
    import torch

    settings = settings or TrainSettings()
    out = _output_dir(out_dir, settings, overwrite)
    eff = settings.model_copy(update={"output_dir": str(out)})
    model_name = resolve_model(eff.model)
    pairs = _training_pairs(release_dir, eff)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    history, steps = _fit(model_name, pairs, eff, out, progress)
    runtime = time.perf_counter() - t0

    step_log = _step_log(history)
    losses = [s["loss"] for s in step_log]
    log_path = _write_log(out, step_log, history, steps, runtime)
    settings_path = _write_settings(out, eff, model_name, release_dir, pairs, torch.get_num_threads())
    return TrainResult(
        out_dir=out,
        model_dir=out / MODEL_DIRNAME,
        log_path=log_path,
        settings_path=settings_path,
        rows_used=pairs.rows_used,
        rows_skipped=pairs.rows_skipped,
        train_pairs=len(pairs),
        num_negatives=pairs.num_negatives,
        steps=steps,
        final_loss=losses[-1] if losses else None,
        mean_loss=sum(losses) / len(losses) if losses else None,
        runtime_s=round(runtime, 3),
    )
