"""Models compared on one release split and one pool: JSON, markdown table, PNG bar plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.train.data import DEFAULT_TEMPLATE
from pipeline.train.evaluate import PMRR_SCALE, evaluate_release
from pipeline.train.pool import DEFAULT_POOL_SAMPLE

__all__ = ["compare", "compare_models", "METRICS", "markdown_table", "plot_comparison"]

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
    """One row per metric, one column per model (4 decimals); the pool it was measured on above."""
    names = list(results)
    lines = []
    first = next(iter(results.values()), {})
    if "pool" in first:
        p = first["pool"]
        lines += [f"Pool: {first['pool_size']} passages ({p['split_passages']} of the split, {p['mined_negatives']} "
                  f"mined negatives, {p['sampled']} sampled from the rest of the collection); "
                  f"{first['rows']} test queries.", ""]
    lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(f"{results[n][m]:.4f}" for n in names) + " |")
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
    ax.set_title(" vs ".join(names))
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def compare_models(
    models: dict[str, Any],
    release_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    max_rows: int | None = None,
    pool_sample: int = DEFAULT_POOL_SAMPLE,
    collection: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_release` for each model (label -> path/object; ``None`` -> bundled MiniLM),
    all on the same pool. The first model is the reference of ``delta`` (label -> metric -> diff).

    Returns ``{"split", "template", "pmrr_scale", "pool_size", "pool", "models", "delta",
    "markdown", "files"}``; with ``out_dir``, also writes ``compare.json``, ``compare.md`` and
    ``compare.png`` there.
    """
    kw = dict(max_rows=max_rows, pool_sample=pool_sample, collection=collection)
    results = {name: evaluate_release(m, release_dir, split, template, batch_size, **kw) for name, m in models.items()}
    for name, m in models.items():
        results[name]["model"] = _label(m)
    ref = next(iter(results))
    first = results[ref]
    report: dict[str, Any] = {
        "split": split,
        "template": template,
        "release_dir": str(release_dir),
        "pmrr_scale": PMRR_SCALE,
        "pool_size": first["pool_size"],
        "pool": first["pool"],
        "models": results,
        "delta": {n: {m: results[n][m] - first[m] for m in METRICS} for n in results if n != ref},
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
    """Base vs fine-tuned (``base_model=None`` -> bundled MiniLM): :func:`compare_models` with
    ``delta`` flattened to {metric: finetuned - base}."""
    report = compare_models({"base": base_model, "finetuned": finetuned_model}, release_dir, split, template,
                            batch_size, out_dir, max_rows, pool_sample, collection)
    report["delta"] = report["delta"]["finetuned"]
    return report
