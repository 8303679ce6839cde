"""Stage output directories: atomic Parquet shards, a state file, and `_SUCCESS.json`.

A stage is a function from an input directory to an output one. Each shard is written to a
temporary name and renamed, so a shard that exists is complete; `_SUCCESS.json` marks the
whole stage complete and records what produced it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import __version__
from pipeline import fileio
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
    # Host, pid and a random part: Ray workers on two nodes sharing the folder may have the same pid,
    # and a retried task may race its slow original (each must rename a complete file of its own).
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
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
    try:
        fileio.write_json_atomic(obj, path)
    except OSError as e:
        raise InfirError(f"{path}: cannot write: {e.strerror or e}") from None


class _Shard(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    rows: int = Field(ge=0)
    sha256: str
    failed: int = Field(0, ge=0)
    input: str | None = None


class SuccessRecord(BaseModel):
    """What `_SUCCESS.json` must hold; any other shape is refused with one clear line."""

    model_config = ConfigDict(extra="allow")
    stage: str
    rows: int = Field(0, ge=0)
    shards: list[_Shard] = []
    summary: dict = {}
    input_fingerprint: str | None = None
    config_hash: str | None = None
    prompt_hashes: dict[str, str] = {}
    lineage: list[str] = []


class StateRecord(BaseModel):
    """What `_STATE.json` (an attempt in progress) must hold."""

    model_config = ConfigDict(extra="allow")
    input_fingerprint: str | None = None
    config_hash: str | None = None
    prompt_hashes: dict[str, str] = {}
    inputs: dict[str, str] | None = {}
    lineage: list[str] = []
    retrying: int = Field(0, ge=0)


#: The input fingerprint a stage records while its upstream is still being written (a streamed
#: build, `runner/stream.py`): replaced by the upstream's own when both have finished.
STREAMED = "streamed"


def _load_record(p: Path, model: type[BaseModel], what: str) -> dict:
    stage = p.parent.name
    try:
        data = json.loads(p.read_text())
        model.model_validate(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InfirError(f"{p}: corrupt {what} (not JSON); rerun `infir {stage} --force`") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "the file"
        raise InfirError(f"{p}: malformed {what} ({where}: {err['msg']}); rerun `infir {stage} --force`") from None
    except OSError as e:
        raise InfirError(f"{p}: cannot read {what}: {e.strerror or e}") from None
    return data


def read_success(stage_dir: Path) -> dict | None:
    p = Path(stage_dir) / SUCCESS
    if not p.is_file():
        return None
    return _load_record(p, SuccessRecord, "success marker")


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
        yield path.name, read_shard(path)


def read_shard(path: Path, then: str = "rerun the stage with --force") -> pa.Table:
    """One finished shard; one clear line (saying `then`) if it cannot be read."""
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InfirError(f"{path}: unreadable Parquet shard ({e}); {then}") from None


def read_stage_table(stage_dir: Path, prefix: str = "part") -> pa.Table:
    tables = [t for _, t in iter_tables(stage_dir, prefix)]
    if not tables:
        raise InfirError(f"{stage_dir}: no '{prefix}' shards")
    return pa.concat_tables(tables)


@dataclass
class StageOutput:
    """The output directory of one stage of one run, with its lock, resume, retry and skip rules.

    Every shard made from input rows records a hash of those rows (`input`) and how many of its
    rows failed in this stage (`failed`). A finished stage is skipped on rerun unless it has failed
    rows, or its input was changed by such a retry upstream: then it is redone, keeping each shard
    whose input is unchanged and which has no failed rows (see `sharded.run_chunks`).
    """

    run_dir: Path
    stage: str
    input_fingerprint: str
    config_hash: str
    prompt_hashes: dict[str, str] = field(default_factory=dict)
    force: bool = False
    shards: list[dict] = field(default_factory=list)
    lock_held: bool = False  # the caller already holds this stage's lock (taken before reading inputs)

    def __post_init__(self) -> None:
        self.dir = Path(self.run_dir) / self.stage
        self._lock = StageLock(self.dir)
        self._started = time.time()
        # shard name -> hash of the input rows it was made from; None: a state written before
        # shards recorded their input (any finished shard is then adopted, as before).
        self._inputs: dict[str, str] | None = {}
        self._redo_from: dict | None = None
        self.lineage: list[str] = []  # fingerprints of the earlier outputs this one replaces
        self.retrying = 0  # failed rows of the earlier output that this attempt sends again

    # Identity of what this stage is producing; a mismatch means mixing old and new output.
    @property
    def identity(self) -> dict:
        return {
            "input_fingerprint": self.input_fingerprint,
            "config_hash": self.config_hash,
            "prompt_hashes": dict(sorted(self.prompt_hashes.items())),
        }

    def __enter__(self) -> "StageOutput":
        if not self.lock_held:
            self._lock.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if not self.lock_held:
            self._lock.__exit__(*exc)

    def completed(self) -> dict | None:
        """The success record if this exact stage already finished with nothing left to retry;
        None if it must run (again); refuses on a changed config, prompt or input."""
        if self.force:  # before reading: --force is also the way out of a corrupt marker
            return None
        success = read_success(self.dir)
        if success is None:
            return None
        if self._same_identity(success):
            if failed_rows(success) == 0 and not missing_shards(self.dir, success):
                return success
            # Rows failed last time, or shards were deleted since: redo those (can_adopt keeps the rest).
            self._redo_from = success
            return None
        if self._input_replaced_by_retry(success):
            self._redo_from = success
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
        """Start, resume or redo: check the state of an interrupted attempt, clear it on --force."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path = self.dir / STATE
        state: dict = {"inputs": {}}
        if self.force:
            self._clear()
        elif self._redo_from is not None:
            state = self._redo_state(self._redo_from)
        elif state_path.is_file():
            state = _read_state(state_path)
            if not self._same_identity(state):
                if not any(self.dir.rglob("*.parquet")):
                    state = {"inputs": {}}  # the attempt kept nothing: nothing to mix, start afresh
                elif self._streamed_either_side(state):
                    # One attempt read its upstream while it was being written (a streamed build):
                    # its shards are kept only where their recorded input rows are this attempt's.
                    state = {**state, "inputs": state["inputs"]}
                elif self._input_replaced_by_retry(state):
                    # Interrupted before an upstream retry: its shards are kept only where their
                    # input rows are unchanged (a state without input hashes keeps none).
                    state = {**state, "inputs": state.get("inputs") or {}}
                else:
                    raise InfirError(
                        f"{self.dir}: an interrupted attempt used other {self._diff(state)}; "
                        "rerun with --force to discard it"
                    )
        elif any(self.dir.rglob("*.parquet")) or any(p.is_dir() for p in self.dir.iterdir()):
            raise InfirError(f"{self.dir}: holds output of unknown origin; rerun with --force")
        self._remove_temp_files()
        self._inputs = dict(state["inputs"]) if isinstance(state.get("inputs"), dict) else None
        self.lineage = list(state.get("lineage", []))
        self.retrying = int(state.get("retrying", 0))
        self._save_state()
        if self._redo_from is not None:
            # Only now: a kill before this line finds the old success and starts the redo again.
            (self.dir / SUCCESS).unlink(missing_ok=True)

    def _redo_state(self, success: dict) -> dict:
        keep = {
            s["name"]: s["input"] for s in success.get("shards", []) if s.get("input") and not s.get("failed")
        }
        return {
            "inputs": keep,
            "lineage": list(success.get("lineage", [])) + [stage_fingerprint(success)],
            "retrying": failed_rows(success),
        }

    def _input_replaced_by_retry(self, record: dict) -> bool:
        """True if only the input changed since `record` (a success or a state), and it changed
        because the upstream stage retried failed rows (its lineage holds the old input)."""
        if record.get("config_hash") != self.config_hash or record.get("prompt_hashes") != self.identity["prompt_hashes"]:
            return False
        old = record.get("input_fingerprint")
        for d in sorted(p for p in Path(self.run_dir).iterdir() if p.is_dir() and p != self.dir):
            try:
                up = read_success(d)
            except InfirError:
                continue
            if up and old in up.get("lineage", []) and stage_fingerprint(up) == self.input_fingerprint:
                return True
        return False

    def _streamed_either_side(self, state: dict) -> bool:
        """The same config and prompts, either side's input `STREAMED`, and the state records the
        input of each of its shards (so no shard made from other rows is ever kept)."""
        same_rest = (state.get("config_hash") == self.config_hash
                     and state.get("prompt_hashes") == self.identity["prompt_hashes"])
        streamed = STREAMED in (state.get("input_fingerprint"), self.input_fingerprint)
        return same_rest and streamed and isinstance(state.get("inputs"), dict)

    def _save_state(self) -> None:
        state = {**self.identity, "lineage": self.lineage, "retrying": self.retrying}
        if self._inputs is not None:
            state["inputs"] = self._inputs
        write_json_atomic(state, self.dir / STATE)

    def _remove_temp_files(self) -> None:
        # Left by a killed writer (we hold the lock, so no live writer owns them).
        for p in self.dir.rglob(".*.tmp-*"):
            p.unlink(missing_ok=True)

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name == ".lock":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def same_identity(self, record: dict) -> bool:
        return self._same_identity(record)

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

    def can_adopt(self, name: str, input_hash: str | None = None) -> bool:
        """A finished shard this attempt would write identically: made from these input rows and,
        after a finished run, free of failed rows."""
        if not self.has_shard(name):
            return False
        return self._inputs is None or input_hash is None or self._inputs.get(name) == input_hash

    def write_shard(self, name: str, table: pa.Table, *, failed: int = 0, input_hash: str | None = None) -> None:
        sha = write_parquet_atomic(table, self.dir / name)
        self._record(name, table.num_rows, sha, failed, input_hash)
        if input_hash is not None and self._inputs is not None:
            self._inputs[name] = input_hash
            self._save_state()

    def adopt_shard(self, name: str, *, input_hash: str | None = None,
                    count_failed: Callable[[pa.Table], int] | None = None) -> pa.Table | None:
        """Register a shard finished by an earlier attempt; None if it cannot be read (redo it)."""
        path = self.dir / name
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError):
            return None
        failed = count_failed(table) if count_failed else 0
        self._record(name, table.num_rows, sha256_file(path), failed, input_hash)
        return table

    def register_shard(self, name: str, *, input_hash: str | None = None,
                       count_failed: Callable[[pa.Table], int] | None = None) -> pa.Table | None:
        """Record a shard another process (a Ray worker) wrote atomically into this folder, by
        what is on disk now (its sha256 read back), and remember its input rows for a resume."""
        table = self.adopt_shard(name, input_hash=input_hash, count_failed=count_failed)
        if table is not None and input_hash is not None and self._inputs is not None:
            self._inputs[name] = input_hash
            self._save_state()
        return table

    def _record(self, name: str, rows: int, sha: str, failed: int = 0, input_hash: str | None = None) -> None:
        self.shards = [s for s in self.shards if s["name"] != name]
        rec: dict = {"name": name, "rows": rows, "sha256": sha}
        if failed:
            rec["failed"] = failed
        if input_hash is not None:
            rec["input"] = input_hash
        self.shards.append(rec)

    def finish(self, summary: dict, rows: int | None = None) -> dict:
        """Mark the stage complete. `rows`: its output rows (default: the rows of its part shards)."""
        self._remove_unlisted_shards()
        success = {
            "stage": self.stage,
            **self.identity,
            "code_version": __version__,
            "rows": rows if rows is not None else sum(s["rows"] for s in self.shards if s["name"].startswith("part-")),
            "shards": sorted(self.shards, key=lambda s: s["name"]),
            "summary": summary,
            "seconds": round(time.time() - self._started, 3),
        }
        if self.lineage:
            success["lineage"] = self.lineage
        write_json_atomic(success, self.dir / SUCCESS)
        (self.dir / STATE).unlink(missing_ok=True)
        return success

    def _remove_unlisted_shards(self) -> None:
        # Readers glob the folder: a shard of an earlier attempt that this one did not write
        # (fewer input rows now) must not be read as part of this output.
        listed = {s["name"] for s in self.shards}
        for p in self.dir.rglob("*.parquet"):
            if p.relative_to(self.dir).as_posix() not in listed:
                p.unlink()


def failed_rows(success: dict) -> int:
    """Rows of a finished stage that failed in that stage (a rerun sends them again)."""
    return sum(int(s.get("failed", 0)) for s in success.get("shards", []))


def missing_shards(stage_dir: Path, success: dict) -> list[str]:
    """Shards `_SUCCESS.json` lists that are no longer on disk (deleted after the stage finished):
    the stage is damaged, and a rerun redoes them. A stat per shard, no hashing."""
    return [s["name"] for s in success.get("shards", []) if not (Path(stage_dir) / s["name"]).is_file()]


def _read_state(path: Path) -> dict:
    return _load_record(path, StateRecord, "state file")
