"""`infir eval`: one model on a release split, a BEIR folder or a FollowIR-layout folder.

Prints the result as JSON on stdout and writes it as ``<out>/eval-<kind>.json`` and ``.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import InfirError

__all__ = ["run_eval"]

_TITLES = {
    "release": "Release split: nDCG@10, MRR@10, p-MRR, no-instruction ablation",
    "beir": "BEIR dataset: nDCG@10 and MRR@10 with and without instructions",
    "followir": "FollowIR-layout task: p-MRR (MTEB definition), nDCG@5 and MAP@1000 (original instructions)",
}


def run_eval(
    model: str | None,
    *,
    release: Path | None = None,
    beir: Path | None = None,
    followir: Path | None = None,
    split: str = "test",
    template: str = "{query} {instruction}",
    out: Path | None = Path("eval-report"),
    pool_sample: int | None = None,
    collection: Path | None = None,
) -> dict[str, Any]:
    from pipeline.progress import console
    from pipeline.train import evaluate_beir, evaluate_followir, evaluate_release
    from pipeline.train.pool import DEFAULT_POOL_SAMPLE
    from pipeline.train.report import write_report

    given = {k: v for k, v in (("release", release), ("beir", beir), ("followir", followir)) if v is not None}
    if len(given) != 1:
        raise InfirError("give exactly one of --release DIR, --beir DIR or --followir DIR")
    if (pool_sample is not None or collection is not None) and release is None:
        raise InfirError("--pool-sample and --collection apply to --release only")
    kind = next(iter(given))
    if kind == "release":
        from pipeline.release import verify_release

        verify_release(release)  # every checksum, nothing outside the folder: before a model is loaded
        sample = DEFAULT_POOL_SAMPLE if pool_sample is None else pool_sample
        result = evaluate_release(model, release, split, template, pool_sample=sample, collection=collection)
    elif kind == "beir":
        result = evaluate_beir(model, beir, split, template)
    else:
        result = evaluate_followir(model, followir, split, template)
    result = {"model": model or "all-MiniLM-L6-v2 (bundled)", **result}
    print(json.dumps(result, indent=2, default=str))
    if out is not None:
        files = write_report(result, out, f"eval-{kind}", _TITLES[kind])
        console.print(f"report: {files['json']}, {files['markdown']}")
    return result
