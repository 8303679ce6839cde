"""Base vs fine-tuned comparison on a release split: JSON, markdown table, PNG bar plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.train.data import DEFAULT_TEMPLATE
from pipeline.train.evaluate import PMRR_SCALE, evaluate_release
from pipeline.train.pool import DEFAULT_POOL_SAMPLE

__all__ = ["compare", "METRICS", "markdown_table", "plot_comparison"]

METRICS = (
    "ndcg_at_10",
    "mrr_at_10",
    "ndcg_at_10_query_only",
    "mrr_at_10_query_only",
    "pmrr_instruction",
    "pmrr_query",
    "pmrr",
)


def _label(model: Any) -> str:
    if model is None:
        return "all-MiniLM-L6-v2 (bundled)"
    if isinstance(model, (str, Path)):
        return str(model)
    return type(model).__name__


def markdown_table(results: dict[str, dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> str:
    """Rows = model x metric; columns: model, metric, value (4 decimals)."""
    lines = ["| model | metric | value |", "|---|---|---|"]
    first = next(iter(results.values()), {})
    if "pool_size" in first:
        lines.insert(0, f"Pool: {first['pool_size']} passages (split {first['pool']['split_passages']}, mined "
                        f"negatives {first['pool']['mined_negatives']}, sampled {first['pool']['sampled']}).\n")
    for name, res in results.items():
        for m in metrics:
            lines.append(f"| {name} | {m} | {res[m]:.4f} |")
    return "\n".join(lines) + "\n"


def plot_comparison(results: dict[str, dict[str, Any]], path: str | Path, metrics: tuple[str, ...] = METRICS) -> Path:
    """Grouped bar plot (one group per metric, one bar per model), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(metrics))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, name in enumerate(names):
        vals = [results[name][m] for m in metrics]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, metrics, rotation=20, ha="right")
    ax.set_ylabel("score (p-MRR raw, [-1, 1])")
    ax.set_title("base vs fine-tuned")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def compare(
    base_model: Any,
    finetuned_model: Any,
    release_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    max_rows: int | None = None,
    pool_sample: int = DEFAULT_POOL_SAMPLE,
    collection: str | Path | None = None,
) -> dict[str, Any]:
    """Run :func:`evaluate_release` on both models (``base_model=None`` -> bundled MiniLM).

    Returns ``{"split", "template", "pmrr_scale", "models": {"base": {...}, "finetuned": {...}},
    "delta": {metric: finetuned - base}, "markdown": str, "files": {...}}``. With ``out_dir``,
    also writes ``compare.json``, ``compare.md`` and ``compare.png`` there.
    """
    kw = dict(max_rows=max_rows, pool_sample=pool_sample, collection=collection)
    results = {
        "base": evaluate_release(base_model, release_dir, split, template, batch_size, **kw),
        "finetuned": evaluate_release(finetuned_model, release_dir, split, template, batch_size, **kw),
    }
    results["base"]["model"] = _label(base_model)
    results["finetuned"]["model"] = _label(finetuned_model)
    report: dict[str, Any] = {
        "split": split,
        "template": template,
        "release_dir": str(release_dir),
        "pmrr_scale": PMRR_SCALE,
        "pool_size": results["base"]["pool_size"],
        "pool": results["base"]["pool"],
        "models": results,
        "delta": {m: results["finetuned"][m] - results["base"][m] for m in METRICS},
        "markdown": markdown_table(results),
        "files": {},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        png = plot_comparison(results, out / "compare.png")
        md = out / "compare.md"
        md.write_text(report["markdown"], encoding="utf-8")
        js = out / "compare.json"
        report["files"] = {"json": str(js), "markdown": str(md), "png": str(png)}
        tmp = js.with_name(f".{js.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, js)
    return report
