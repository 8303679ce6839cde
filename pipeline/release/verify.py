"""verify_release: every checksum, row count, schema, split and card link of a release, and nothing
outside the release folder read (`paths`)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import InfirError
from pipeline.release.card import linked_files, parse_front_matter
from pipeline.release.manifest import MANIFEST_NAME, load_manifest, sha256_file
from pipeline.release.paths import check_pattern, release_error, release_files, release_path
from pipeline.release.schema import RELEASE_SCHEMA, SPLITS, ST_SCHEMA, schema_fingerprint
from pipeline.release.triplets import TRIPLETS_DIR


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    name: str
    version: str
    rows: int
    rows_per_split: dict[str, int]
    shards: int
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes), manifest included

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.files)

    def summary(self) -> str:
        per = ", ".join(f"{s} {n}" for s, n in self.rows_per_split.items())
        return (
            f"release {self.name} {self.version} OK: {self.rows} rows ({per}), {self.shards} shards, "
            f"{len(self.files)} files, {self.total_bytes} bytes; all checksums match"
        )


def _fail(release: Path, rel: str, why: str) -> InfirError:
    return release_error(release, rel, why)


class _File(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    path: str
    sha256: str


class _Shard(_File):
    rows: int = Field(ge=0)
    split: str


class _Split(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    rows: int = Field(0, ge=0)


class _Manifest(BaseModel):
    """What verify reads of a manifest; any other shape is one line naming the field."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = ""
    version: str = ""
    rows: int = Field(ge=0)
    splits: dict[str, _Split] = {}
    shards: list[_Shard] = []
    files: list[_File] = []


def _parse(release: Path, data: dict) -> _Manifest:
    try:
        return _Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "the manifest"
        raise _fail(release, MANIFEST_NAME, f"malformed manifest ({where}: {err['msg']})") from None


def _checked_file(release: Path, entry: _File, what: str) -> Path:
    """The entry's file, inside the release, present, with the sha256 the manifest records."""
    p = release_path(release, entry.path, MANIFEST_NAME)
    if not p.is_file():
        raise _fail(release, entry.path, f"{what} listed in the manifest is missing")
    digest = sha256_file(p)
    if digest != entry.sha256:
        raise _fail(release, entry.path, f"sha256 mismatch (manifest {entry.sha256[:16]}…, file {digest[:16]}…)")
    return p


def _check_splits(release: Path, manifest: _Manifest, rows_per_split: dict, queries: dict) -> None:
    """No query in two splits; each split's and the total row count as the manifest says."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            leak = queries[a] & queries[b]
            if leak:
                raise _fail(release, "data/", f"query id {sorted(leak)[0]!r} appears in both {a} and {b}")
    for s in SPLITS:
        expected = manifest.splits[s].rows if s in manifest.splits else 0
        if rows_per_split[s] != expected:
            raise _fail(release, MANIFEST_NAME, f"split {s}: shards hold {rows_per_split[s]} rows, manifest says {expected}")
    if sum(rows_per_split.values()) != manifest.rows:
        raise _fail(release, MANIFEST_NAME, f"shards hold {sum(rows_per_split.values())} rows, manifest says {manifest.rows}")


def _verify_shards(release: Path, manifest: _Manifest) -> dict[str, int]:
    """Every shard: inside the release, its checksum, rows, schema and split; returns rows per split."""
    rows_per_split = {s: 0 for s in SPLITS}
    queries: dict[str, set[str]] = {s: set() for s in SPLITS}
    for shard in manifest.shards:
        rel = shard.path
        p = _checked_file(release, shard, "shard")
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - any parquet failure is a bad file
            raise _fail(release, rel, f"unreadable Parquet ({e})") from e
        if pf.metadata.num_rows != shard.rows:
            raise _fail(release, rel, f"{pf.metadata.num_rows} rows, manifest says {shard.rows}")
        if not pf.schema_arrow.equals(RELEASE_SCHEMA, check_metadata=False):
            raise _fail(release, rel, "Arrow schema differs from the release schema")
        split = shard.split
        if split not in rows_per_split:
            raise _fail(release, rel, f"unknown split {split!r}")
        cols = pf.read(columns=["split", "query_id"])
        bad = set(cols.column("split").to_pylist()) - {split}
        if bad:
            raise _fail(release, rel, f"rows of split(s) {sorted(bad)} in a {split} shard")
        queries[split].update(cols.column("query_id").to_pylist())
        rows_per_split[split] += shard.rows
    _check_splits(release, manifest, rows_per_split, queries)
    return rows_per_split


def verify_release(path: Path | str) -> VerifyReport:
    """Every file of the release as its manifest records it, nothing outside the folder read."""
    release = Path(path)
    if not release.is_dir():
        raise InfirError(f"release {release}: not a directory")
    # First, before reading any file: a symlink anywhere below the folder (manifest included) is refused.
    on_disk = release_files(release)
    data = load_manifest(release)
    manifest = _parse(release, data)
    schema = data.get("schema")
    fp = schema.get("fingerprint") if isinstance(schema, dict) else None
    if fp != schema_fingerprint(RELEASE_SCHEMA):
        raise _fail(release, MANIFEST_NAME, f"schema fingerprint {fp} differs from this code's release schema")

    rows_per_split = _verify_shards(release, manifest)
    for f in manifest.files:
        p = _checked_file(release, f, "file")
        if f.path.startswith(f"{TRIPLETS_DIR}/") and f.path.endswith(".parquet"):
            if not pq.ParquetFile(p).schema_arrow.equals(ST_SCHEMA, check_metadata=False):
                raise _fail(release, f.path, "schema differs from (anchor, positive, negative_1, negative_2)")

    listed = {MANIFEST_NAME, *(s.path for s in manifest.shards), *(f.path for f in manifest.files)}
    for rel in on_disk:
        if rel not in listed:
            raise _fail(release, rel, "file not listed in the manifest (would be published unchecked)")

    _verify_card(release, manifest)
    files = [(rel, (release / rel).stat().st_size) for rel in on_disk]
    return VerifyReport(
        path=release,
        name=manifest.name,
        version=manifest.version,
        rows=manifest.rows,
        rows_per_split=rows_per_split,
        shards=len(manifest.shards),
        files=files,
    )


def _data_files(release: Path, config: dict) -> list[tuple[str, str]]:
    """(split, pattern) of one card config's `data_files`, each pattern inside the release."""
    name = config.get("config_name")
    out = []
    for entry in config.get("data_files") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("split"), str):
            raise _fail(release, "README.md", f"config {name!r}: data_files entry {entry!r} is not {{split, path}}")
        patterns = entry.get("path") if isinstance(entry.get("path"), list) else [entry.get("path")]
        out += [(entry["split"], check_pattern(release, pat, "README.md")) for pat in patterns]
    return out


def _verify_card(release: Path, manifest: _Manifest) -> None:
    card = release / "README.md"
    if not card.is_file():
        raise _fail(release, "README.md", "dataset card is missing")
    text = card.read_text(encoding="utf-8")
    try:
        meta = parse_front_matter(text)
    except Exception as e:  # noqa: BLE001 - YAML errors of any kind
        raise _fail(release, "README.md", f"invalid YAML front matter ({e})") from e
    configs_list = meta.get("configs") if isinstance(meta, dict) else None
    configs = {c.get("config_name"): c for c in configs_list or [] if isinstance(c, dict)}
    default = configs.get("default")
    if not default:
        raise _fail(release, "README.md", "front matter has no 'default' config")
    for name, config in configs.items():  # `datasets` reads every config's files from a local folder
        if name != "default":
            _data_files(release, config)
    shard_paths = {s.path: s.split for s in manifest.shards}
    covered: set[str] = set()
    for split, pat in _data_files(release, default):
        hits = [p for p in shard_paths if fnmatch.fnmatch(p, pat)]
        if not hits:
            raise _fail(release, "README.md", f"data_files pattern {pat!r} matches no shard")
        for h in hits:
            if shard_paths[h] != split:
                raise _fail(release, "README.md", f"pattern {pat!r} maps {h} to split {split!r}")
        covered.update(hits)
    missing = sorted(set(shard_paths) - covered)
    if missing:
        raise _fail(release, "README.md", f"shard {missing[0]} is not covered by the card's data_files")
    for rel in linked_files(text):
        if not release_path(release, rel, "README.md").is_file():
            raise _fail(release, rel, "linked from README.md but missing")
