"""Benchmark: default `train` settings on a ~100-row synthetic release, then base vs fine-tuned.

    HF_HUB_OFFLINE=1 python bench/bench_train.py [--rows 100] [--pad 2] [--out /tmp/bench_train]

Prints one JSON object (timings, steps, metrics). The synthetic passages are ~20 words plus
``pad`` x ~30 words of filler, so pad=2 approximates MS MARCO passage length (~80 words).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train import TrainSettings, compare, train  # noqa: E402
from tests.train_fixtures import write_synthetic_release  # noqa: E402  (a test fixture, not part of the package)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--test-rows", type=int, default=20)
    ap.add_argument("--pad", type=int, default=2)
    ap.add_argument("--loss", default="mnrl", choices=["mnrl", "cached_mnrl"])
    ap.add_argument("--out", default="/tmp/bench_train")
    a = ap.parse_args()

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    rel = write_synthetic_release(out / "release", n_train=a.rows, n_test=a.test_rows, seed=0, pad=a.pad)
    import torch

    t0 = time.perf_counter()
    res = train(rel, out / "run", TrainSettings(loss=a.loss))
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    rep = compare(None, res.model_dir, rel, out_dir=out / "compare")
    t_eval = time.perf_counter() - t1
    print(
        json.dumps(
            {
                "rows": a.rows,
                "pairs": res.train_pairs,
                "steps": res.steps,
                "loss": a.loss,
                "torch_threads": torch.get_num_threads(),
                "train_s": round(t_train, 1),
                "s_per_step": round(t_train / max(res.steps, 1), 2),
                "compare_s": round(t_eval, 1),
                "mean_loss": res.mean_loss,
                "delta": rep["delta"],
                "base": {k: rep["models"]["base"][k] for k in rep["delta"]},
                "finetuned": {k: rep["models"]["finetuned"][k] for k in rep["delta"]},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
