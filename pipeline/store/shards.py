"""Stage output directories: atomic Parquet shards, a state file, and `_SUCCESS.json`.

A stage is a function from an input directory to an output one. Each shard is written to a
temporary name and renamed, so a shard that exists is complete; `_SUCCESS.json` marks the
whole stage complete and records what produced it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.errors import InfirError
from pipeline.store.ids import canonical_json, sha256_file
from pipeline.store.lock import StageLock

SUCCESS = "_SUCCESS.json"
STATE = "_STATE.json"


def shard_name(index: int, prefix: str = "part") -> str:
    return f"{prefix}-{index:05d}.parquet"


def write_parquet_atomic(table: pa.Table, path: Path, compression: str = "zstd") -> str:
    """Write `table` to `path` via a temp file + rename; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression=compression)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InfirError(f"{path}: cannot write shard: {e.strerror or e}") from None
    return sha256_file(path)


def write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InfirError(f"{path}: cannot write: {e.strerror or e}") from None


def read_success(stage_dir: Path) -> dict | None:
    p = Path(stage_dir) / SUCCESS
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InfirError(f"{p}: corrupt success marker; rerun the stage with --force") from None


def require_stage(run_dir: Path, stage: str, hint: str | None = None) -> dict:
    """The `_SUCCESS.json` of a finished stage, or a clear error naming what to run."""
    success = read_success(Path(run_dir) / stage)
    if success is None:
        raise InfirError(
            f"{Path(run_dir) / stage}: stage '{stage}' has not finished; run `{hint or 'infir ' + stage}` first"
        )
    return success


def stage_fingerprint(success: dict) -> str:
    """What a downstream stage records as its input: the content hashes of the upstream shards."""
    import hashlib

    shards = sorted((s["name"], s["sha256"]) for s in success.get("shards", []))
    return hashlib.sha256(canonical_json(shards).encode()).hexdigest()[:16]


def iter_tables(stage_dir: Path, prefix: str = "part") -> Iterator[tuple[str, pa.Table]]:
    for path in sorted(Path(stage_dir).glob(f"{prefix}-*.parquet")):
        try:
            yield path.name, pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InfirError(f"{path}: unreadable Parquet shard ({e}); rerun the stage with --force") from None


def read_stage_table(stage_dir: Path, prefix: str = "part") -> pa.Table:
    tables = [t for _, t in iter_tables(stage_dir, prefix)]
    if not tables:
        raise InfirError(f"{stage_dir}: no '{prefix}' shards")
    return pa.concat_tables(tables)


@dataclass
class StageOutput:
    """The output directory of one stage of one run, with its lock, resume and skip rules."""

    run_dir: Path
    stage: str
    input_fingerprint: str
    config_hash: str
    prompt_hashes: dict[str, str] = field(default_factory=dict)
    force: bool = False
    shards: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir = Path(self.run_dir) / self.stage
        self._lock = StageLock(self.dir)
        self._started = time.time()

    # Identity of what this stage is producing; a mismatch means mixing old and new output.
    @property
    def identity(self) -> dict:
        return {
            "input_fingerprint": self.input_fingerprint,
            "config_hash": self.config_hash,
            "prompt_hashes": dict(sorted(self.prompt_hashes.items())),
        }

    def __enter__(self) -> "StageOutput":
        self._lock.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def completed(self) -> dict | None:
        """The success record if this exact stage already finished; refuses on a changed identity."""
        success = read_success(self.dir)
        if success is None:
            return None
        if self._same_identity(success):
            return success
        if self.force:
            return None
        raise InfirError(
            f"{self.dir}: finished earlier with other {self._diff(success)}; "
            "rerun with --force to redo it, or use another --run"
        )

    def start(self) -> dict | None:
        """The success record if this stage already finished (nothing to do), else get ready to write."""
        done = self.completed()
        if done is None:
            self.prepare()
        return done

    def prepare(self) -> None:
        """Start or resume: check the state of an interrupted attempt, clear it on --force."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path = self.dir / STATE
        if self.force:
            self._clear()
        elif state_path.is_file():
            state = json.loads(state_path.read_text())
            if not self._same_identity(state):
                raise InfirError(
                    f"{self.dir}: an interrupted attempt used other {self._diff(state)}; "
                    "rerun with --force to discard it"
                )
        elif any(self.dir.glob("*.parquet")) or any(p.is_dir() for p in self.dir.iterdir()):
            raise InfirError(f"{self.dir}: holds output of unknown origin; rerun with --force")
        write_json_atomic(self.identity, state_path)

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name == ".lock":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _same_identity(self, record: dict) -> bool:
        return all(record.get(k) == v for k, v in self.identity.items())

    def _diff(self, record: dict) -> str:
        names = {"input_fingerprint": "inputs", "config_hash": "config", "prompt_hashes": "prompts"}
        changed = [names[k] for k, v in self.identity.items() if record.get(k) != v]
        return " and ".join(changed) or "settings"

    def path(self, name: str) -> Path:
        return self.dir / name

    def has_shard(self, name: str) -> bool:
        return (self.dir / name).is_file()

    def write_shard(self, name: str, table: pa.Table) -> None:
        sha = write_parquet_atomic(table, self.dir / name)
        self._record(name, table.num_rows, sha)

    def adopt_shard(self, name: str) -> pa.Table:
        """Register a shard finished by an earlier, interrupted attempt."""
        path = self.dir / name
        table = pq.read_table(path)
        self._record(name, table.num_rows, sha256_file(path))
        return table

    def _record(self, name: str, rows: int, sha: str) -> None:
        self.shards = [s for s in self.shards if s["name"] != name]
        self.shards.append({"name": name, "rows": rows, "sha256": sha})

    def finish(self, summary: dict) -> dict:
        success = {
            "stage": self.stage,
            **self.identity,
            "code_version": __version__,
            "rows": sum(s["rows"] for s in self.shards if s["name"].startswith("part-")),
            "shards": sorted(self.shards, key=lambda s: s["name"]),
            "summary": summary,
            "seconds": round(time.time() - self._started, 3),
        }
        write_json_atomic(success, self.dir / SUCCESS)
        (self.dir / STATE).unlink(missing_ok=True)
        return success
