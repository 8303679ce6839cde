"""Draw the audit's stratified, seeded sample from a run's verify output (`sample.json`).

Strata: the rows verify accepted, the rows the reasoning judge rejected, the rows the cascade's
first judge rejected (its rejection final), the rows a deterministic filter rejected. Rows that
failed (an error, not a verdict) are not the judge's decisions and are left out. Each sampled row
keeps its stratum's weight, population / drawn, so the whole population's share of valid rows can
be estimated from the sample (`score.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from pipeline.errors import InfirError
from pipeline.fileio import sha256_file, write_json_atomic
from pipeline.generation import cascade

STRATA = ("accepted", "rejected_judge", "rejected_first_judge", "rejected_filter")
#: Run column -> the short name a sample row carries it under (the page and labels use these).
ROW_FIELDS = {
    "query_positive": "q_plus", "instruction_positive": "i_plus", "document_positive": "p_plus",
    "instruction_negative": "i_minus", "hard_negative_document_1": "hn1", "query_negative": "q_minus",
    "hard_negative_document_2": "hn2", "query_id": "query_id", "passage_id": "passage_id",
    "instruction_kind": "instruction_kind",
}
_STRATUM_COLUMNS = ("id", "accepted", "decided_by", "verify_error", "failed_filters", "failed_checks")
_JUDGE_COLUMNS = ("verdicts", "failed_checks", "failed_filters", "judge_model", "decided_by", "accepted")


def stratum_of(row: dict) -> str | None:
    """The row's stratum, or None for a row that failed (no verdict to audit)."""
    if row.get("verify_error"):
        return None
    if row.get("accepted"):
        return "accepted"
    by = row.get("decided_by")
    if by is None:  # a run from before `decided_by`: a row with failed filters was never judged
        by = cascade.FILTERS if row.get("failed_filters") else cascade.REASONING_JUDGE
    return {cascade.FILTERS: "rejected_filter", cascade.FIRST_JUDGE: "rejected_first_judge",
            cascade.REASONING_JUDGE: "rejected_judge"}.get(by)


def parse_per_stratum(text: str) -> dict[str, int]:
    """`accepted=50,rejected_judge=20` -> sizes (one clear error naming the bad part)."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, size = part.partition("=")
        if name.strip() not in STRATA:
            raise InfirError(f"--per-stratum {part!r}: unknown stratum {name.strip()!r} (one of {', '.join(STRATA)})")
        if not size.strip().isdigit():
            raise InfirError(f"--per-stratum {part!r}: expected {name.strip()}=<rows>, a whole number >= 0")
        out[name.strip()] = int(size)
    if not out:
        raise InfirError("--per-stratum: expected e.g. accepted=50,rejected_judge=20")
    return out


def quotas(rows: int, population: dict[str, int]) -> dict[str, int]:
    """`rows` split as half to the accepted rows, the rest evenly over the rejected strata present;
    what a stratum cannot fill (too few rows) goes to the others that can."""
    want = {s: 0 for s in STRATA}
    rejected = [s for s in STRATA[1:] if population.get(s)]
    want["accepted"] = (rows + 1) // 2 if rejected else rows
    for i, s in enumerate(rejected):
        want[s] = (rows - want["accepted"]) // len(rejected) + (i < (rows - want["accepted"]) % len(rejected))
    got = {s: min(want[s], population.get(s, 0)) for s in STRATA}
    spare = rows - sum(got.values())
    while spare > 0:
        room = [s for s in STRATA if population.get(s, 0) > got[s]]
        if not room:
            break
        for s in room:
            if spare == 0:
                break
            got[s] += 1
            spare -= 1
    return got


def _shards(run: Path) -> list[Path]:
    verify = run / "verify"
    if not (verify / "_SUCCESS.json").is_file():
        raise InfirError(f"{run}: verify has not finished (no verify/_SUCCESS.json); run `infir build` first")
    shards = sorted(verify.glob("part-*.parquet"))
    if not shards:
        raise InfirError(f"{verify}: finished but holds no part-*.parquet shard; rerun it with --force")
    return shards


def _read(shard: Path, columns) -> list[dict]:
    try:
        f = pq.ParquetFile(shard)
        names = set(f.schema_arrow.names)
        return f.read(columns=[c for c in columns if c in names]).to_pylist()
    except Exception as e:  # pyarrow raises several kinds for a damaged file: name the file
        raise InfirError(f"{shard}: unreadable Parquet shard ({e}); rerun verify with --force") from None


def _judge(row: dict) -> dict:
    """What the judge said about the row: each check's verdict by name (True/False), the reasons,
    and the decision. Hidden on the page until the person has answered the row."""
    verdicts = row.get("verdicts") or []
    return {**{v["check"]: bool(v["passed"]) for v in verdicts},
            "accepted": bool(row.get("accepted")), "decided_by": row.get("decided_by"),
            "failed_checks": list(row.get("failed_checks") or []), "failed_filters": list(row.get("failed_filters") or []),
            "judge_model": row.get("judge_model"), "reasons": {v["check"]: v["reason"] for v in verdicts}}


def _positions(shards: list[Path]) -> dict[str, list[tuple[int, int]]]:
    """(shard, row) positions of every row by stratum; only the few small columns that decide it are read."""
    by: dict[str, list[tuple[int, int]]] = {s: [] for s in STRATA}
    for k, shard in enumerate(shards):
        for i, r in enumerate(_read(shard, _STRATUM_COLUMNS)):
            s = stratum_of(r)
            if s is not None:
                by[s].append((k, i))
    return by


def population(run: Path) -> dict[str, int]:
    """Rows per stratum in the run's verify output."""
    return {s: len(v) for s, v in _positions(_shards(Path(run))).items()}


def draw(run: Path, sizes: dict[str, int], seed: int) -> dict:
    """The sample (sample.json's content): `sizes` rows per stratum (capped at its population),
    drawn with `seed`, in an order shuffled across strata so the position does not give away what
    the judge decided."""
    shards = _shards(run)
    by = _positions(shards)
    rng = np.random.default_rng(seed)
    picked: list[tuple[int, int, str]] = []
    strata = {}
    for s in STRATA:
        n = min(sizes.get(s, 0), len(by[s]))
        chosen = sorted(by[s][int(j)] for j in rng.choice(len(by[s]), size=n, replace=False)) if n else []
        strata[s] = {"population": len(by[s]), "drawn": n, "weight": (len(by[s]) / n) if n else None}
        picked += [(k, i, s) for k, i in chosen]
    order = rng.permutation(len(picked))
    wanted = ("id", *ROW_FIELDS, *_JUDGE_COLUMNS)
    rows_of: dict[int, list[dict]] = {}
    for k in sorted({k for k, _, _ in picked}):
        rows_of[k] = _read(shards[k], wanted)
    rows = []
    for j in order:
        k, i, s = picked[int(j)]
        r = rows_of[k][i]
        rows.append({"row_id": str(r["id"]), "stratum": s, "weight": strata[s]["weight"],
                     "row": {short: r.get(col) for col, short in ROW_FIELDS.items()}, "judge": _judge(r)})
    created = {p.name: sha256_file(p / "_SUCCESS.json") for p in sorted(run.iterdir())
               if (p / "_SUCCESS.json").is_file()}
    return {"version": 1, "run": run.resolve().name, "seed": seed, "created_from": created, "strata": strata,
            "rows": rows}


def write_sample(sample: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sample, path, fsync=True, sort_keys=False)


class SampleRow(BaseModel):
    """What the server and `score` rely on in each sample row (sample.json is infir's own file, but
    a hand edit must fail with one line, not deep in the scoring)."""

    row_id: str
    stratum: str
    weight: float | None
    row: dict
    judge: dict


def load_sample(audit_dir: Path) -> dict:
    path = Path(audit_dir) / "sample.json"
    if not path.is_file():
        raise InfirError(f"{audit_dir}: no sample.json (draw one with `infir audit runs/<run>`)")
    try:
        sample = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InfirError(f"{path}: unreadable ({e})") from None
    if not isinstance(sample, dict) or sample.get("version") != 1 or not isinstance(sample.get("rows"), list):
        raise InfirError(f"{path}: not an audit sample (expected version 1 with rows)")
    for k, r in enumerate(sample["rows"]):
        try:
            row = SampleRow.model_validate(r)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise InfirError(f"{path}: rows[{k}].{where}: {err['msg']}") from None
        if row.stratum not in STRATA:
            raise InfirError(f"{path}: rows[{k}].stratum: {row.stratum!r} is not one of {', '.join(STRATA)}")
    return sample
