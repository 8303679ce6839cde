"""The training check: fine-tune with and without mined negatives, evaluate base and both on the test split.

`use_mined_negatives` adds each row's retrieved negatives to its three pairs; whether that helps is
an empirical question per corpus, so the check trains both variants on the same release and
settings (only that switch differs) and reports them side by side with the base model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.train.compare import compare_models
from pipeline.train.settings import TrainSettings
from pipeline.train.trainer import TrainResult, train

__all__ = ["training_check", "variant_label", "ABLATION_DIRNAME"]

ABLATION_DIRNAME = "ablation"


def variant_label(use_mined: bool) -> str:
    return "finetuned_mined" if use_mined else "finetuned"


def training_check(
    release: str | Path,
    out: str | Path,
    settings: TrainSettings,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``settings`` into ``out`` (and, with ``ablate_mined_negatives``, the variant with
    ``use_mined_negatives`` flipped into ``out/ablation``), then compare base and fine-tuned models
    on the test split; writes ``out/eval/compare.{json,md,png}``. Returns the comparison report
    with a ``training`` entry per variant (pairs, steps, final loss, runtime)."""
    out = Path(out)
    variants: list[tuple[TrainSettings, Path]] = [(settings, out)]
    if settings.ablate_mined_negatives:
        flipped = settings.model_copy(update={"use_mined_negatives": not settings.use_mined_negatives})
        variants.append((flipped, out / ABLATION_DIRNAME))
    results: dict[str, TrainResult] = {}
    for s, target in variants:
        label = variant_label(s.use_mined_negatives)
        res = train(release, target, s, progress=(lambda e, _l=label: progress(_l, e)) if progress else None)
        results[label] = res
    models: dict[str, Any] = {"base": settings.model}
    # Base first, then without mined negatives, then with them, whatever the configured primary.
    for label in sorted(results, key=lambda x: x != "finetuned"):
        models[label] = results[label].model_dir
    report = compare_models(models, release, split="test", template=settings.template,
                            pool_sample=settings.eval_pool_sample, out_dir=out / "eval")
    report["training"] = {
        label: {"rows_used": r.rows_used, "rows_skipped": r.rows_skipped, "train_pairs": r.train_pairs, "negatives_per_pair": r.num_negatives, "steps": r.steps,
                "final_loss": r.final_loss, "runtime_s": round(r.runtime_s, 1), "model_dir": str(r.model_dir)}
        for label, r in results.items()
    }
    report["primary"] = variant_label(settings.use_mined_negatives)
    return report
