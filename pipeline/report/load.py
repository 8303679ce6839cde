"""Read what a run directory holds: its stages in pipeline order and the candidate rows.

The report reads stage outputs only (`<stage>/_SUCCESS.json`, `<stage>/part-*.parquet`), never the
stage code, so a new stage folder (e.g. `filter`, between mine and verify) shows up when it exists.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InfirError

#: Pipeline order of the stage folders a run may hold (absent ones are skipped).
PIPELINE_ORDER = ("source", "generate", "mine", "filter", "verify", "write", "train")
#: Stages whose part shards carry candidate rows, latest first: the report reads the latest present.
ROW_STAGES = ("verify", "filter", "mine", "generate")
FIELDS = (
    "query_positive", "instruction_positive", "document_positive", "instruction_negative",
    "hard_negative_document_1", "query_negative", "hard_negative_document_2",
)
ERROR_COLUMNS = ("generate_error", "mine_error", "filter_error", "verify_error")
USAGE_STAGES = ("generate", "mine", "filter", "verify")
# Everything the report needs except the retrieved negatives (mined_negatives: ~8 passages a row);
# those are read only for the rows the hardness sample draws (see `mined_negatives_of`).
_COLUMNS = (
    ("id", "query_id", "passage_id", "instruction_kind", "accepted", "failed_checks", "failed_filters",
     "verdicts", "generator_model", "poison_model", "judge_model")
    + FIELDS + ERROR_COLUMNS + tuple(f"usage_{s}" for s in USAGE_STAGES)
)


@dataclass
class RunData:
    path: Path
    name: str
    stages: list[str]
    success: dict[str, dict]
    row_stage: str | None
    table: pa.Table | None
    config: dict = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)

    def column(self, name: str) -> list | None:
        if self.table is None or name not in self.table.column_names:
            return None
        return self.table.column(name).to_pylist()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InfirError(f"{path}: unreadable ({e})") from None


def _read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        f = pq.ParquetFile(path)
        names = set(f.schema_arrow.names)
        return f.read(columns=[c for c in (columns or _COLUMNS) if c in names])
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun its stage with --force") from None


def load_run(path: Path) -> RunData:
    """The run's finished stages, their summaries, and the candidate rows of the latest row stage."""
    path = Path(path)
    if not path.is_dir():
        raise InfirError(f"{path}: no such run directory")
    stages = [s for s in PIPELINE_ORDER if (path / s).is_dir()]
    success = {s: _read_json(path / s / "_SUCCESS.json") for s in stages if (path / s / "_SUCCESS.json").is_file()}
    if not success:
        raise InfirError(f"{path}: no finished stage (no <stage>/_SUCCESS.json); run `infir build` first")
    config: dict = {}
    if (path / "config.toml").is_file():
        try:
            config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InfirError(f"{path / 'config.toml'}: unreadable ({e})") from None
    row_stage = next((s for s in ROW_STAGES if s in success), None)
    table, shards = None, []
    if row_stage is not None:
        # Only the top-level part shards: verify/accepted/ and verify/rejected/ repeat the same rows.
        shards = sorted((path / row_stage).glob("part-*.parquet"))
        if not shards:
            raise InfirError(f"{path / row_stage}: finished but holds no part-*.parquet shard; rerun it with --force")
        tables = [_read_shard(p) for p in shards]
        table = pa.concat_tables(tables, promote_options="default")
    return RunData(path=path, name=path.resolve().name, stages=stages, success=success, row_stage=row_stage,
                   table=table, config=config, shards=shards)


def mined_negatives_of(run: RunData, rows: list[int], top: int) -> dict[int, list[str]]:
    """The texts of the `top` best-ranked retrieved negatives of the given row positions, read shard
    by shard so the whole column (every row's passages) is never in memory at once."""
    out: dict[int, list[str]] = {}
    wanted = sorted(rows)
    start, k = 0, 0
    for shard in run.shards:
        n = pq.ParquetFile(shard).metadata.num_rows
        local = []
        while k < len(wanted) and wanted[k] < start + n:
            local.append(wanted[k] - start)
            k += 1
        if local and "mined_negatives" in pq.ParquetFile(shard).schema_arrow.names:
            col = _read_shard(shard, ["mined_negatives"]).column("mined_negatives").take(local).to_pylist()
            for i, negs in zip(local, col):
                ranked = sorted(negs or [], key=lambda x: x.get("rank") or 0)
                out[start + i] = [x["text"] for x in ranked[:top] if x.get("text")]
        start += n
    return out
