"""A small synthetic accepted table + stats (tests, demos, benchmarks of the release writer)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pyarrow as pa

from pipeline.release.schema import INPUT_COLUMNS, MINED_NEGATIVE_TYPE, VERDICT_TYPE

CHECKS = (
    "p_pos_fits_qpos_ipos",
    "p_pos_fails_qpos_ineg",
    "p_pos_fails_qneg_ipos",
    "hn1_fits_qpos_ineg",
    "hn2_fits_qneg_ipos",
    "hn_fail_qpos_ipos",
    "negatives_plausible_close",
)

_WORDS = (
    "solar wind energy battery storage grid river basin climate policy vaccine trial protein enzyme "
    "market inflation bond yield history empire trade route volcano lava mineral soil crop harvest "
    "orbit planet telescope galaxy neuron memory sleep diet exercise heart lung code compiler"
).split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def synthetic_accepted_table(rows: int = 40, queries: int = 30, seed: int = 0, tag: str = "") -> pa.Table:
    """`rows` accepted rows over `queries` query ids (every query has >= 1 row when rows >= queries)."""
    rng = random.Random(seed)
    data: dict[str, list[Any]] = {c: [] for c in INPUT_COLUMNS}
    for k in range(rows):
        q = k % queries
        qp = f"what is {_text(rng, 2, 6)}{tag}"
        row = {
            "query_positive": qp,
            "instruction_positive": f"Focus on {_text(rng, 4, 12)}",
            "document_positive": _text(rng, 30, 90),
            "instruction_negative": f"Focus only on {_text(rng, 4, 12)}",
            "hard_negative_document_1": _text(rng, 30, 90),
            "query_negative": f"what was {_text(rng, 2, 6)}",
            "hard_negative_document_2": _text(rng, 30, 90),
            "source": "synthetic",
            "query_id": f"q{q:04d}",
            "passage_id": f"p{k:05d}",
            "mined_negatives": [
                {"passage_id": f"n{k}-{r}", "text": _text(rng, 10, 20), "score": round(10.0 - r, 3), "rank": r,
                 "method": "bm25"}
                for r in range(1, 3)
            ],
            "verdicts": [{"check": c, "passed": True, "reason": "ok"} for c in CHECKS],
            "generator_model": "offline-gen",
            "judge_model": "offline-judge",
            "prompt_generate": "aaaaaaaaaaaa",
            "prompt_poison": "bbbbbbbbbbbb",
            "prompt_judge": "cccccccccccc",
        }
        row["id"] = hashlib.sha256(f"{row['query_id']}|{row['passage_id']}|{qp}".encode()).hexdigest()[:16]
        for c in INPUT_COLUMNS:
            data[c].append(row[c])
    types = {c: pa.string() for c in INPUT_COLUMNS}
    types["mined_negatives"] = pa.list_(MINED_NEGATIVE_TYPE)
    types["verdicts"] = pa.list_(VERDICT_TYPE)
    return pa.table({c: pa.array(data[c], types[c]) for c in INPUT_COLUMNS})


def synthetic_stats(accepted: int = 40, config: dict | None = None) -> dict[str, Any]:
    failures = {c: i for i, c in enumerate(CHECKS)}
    rejected = 12
    return {
        "candidates": accepted + rejected,
        "accepted": accepted,
        "rejected": rejected,
        "failures": failures,
        "tokens": {"prompt": 123_456, "completion": 7_890},
        "cost_usd": 0.4321,
        "llm_calls": 3 * (accepted + rejected),
        "models": {"generator": "offline-gen", "judge": "offline-judge"},
        "prompt_hashes": {"generate": "aaaaaaaaaaaa", "poison": "bbbbbbbbbbbb", "judge": "cccccccccccc"},
        "backend": "offline",
        "config": config if config is not None else {"run": {"name": "sample"}, "source": {"path": "data/sample"}},
        "code_version": "0.1.0+test",
    }


def written_release(root, name: str, rows: int = 40, queries: int = 30):
    """A real release of the synthetic rows, written under `root` (its version folder)."""
    from pipeline.release import write_release

    return write_release(synthetic_accepted_table(rows=rows, queries=queries), synthetic_stats(rows), root, name).path


def release_copy(pristine, tmp_path, name: str):
    """A copy of a written release at `tmp_path/releases/<name>/1.0.0`, for a test to damage."""
    import shutil

    dst = tmp_path / "releases" / name / "1.0.0"
    shutil.copytree(pristine, dst)
    return dst
