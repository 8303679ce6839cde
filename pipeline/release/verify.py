"""verify_release: every checksum, row count, schema, split and card link of a release."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import InfirError
from pipeline.release.card import linked_files, parse_front_matter
from pipeline.release.manifest import MANIFEST_NAME, load_manifest, sha256_file
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
    return InfirError(f"release {release}: {rel}: {why}")


def _check_splits(release: Path, manifest: dict, rows_per_split: dict, queries: dict) -> None:
    """No query in two splits; each split's and the total row count as the manifest says."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            leak = queries[a] & queries[b]
            if leak:
                raise _fail(release, "data/", f"query id {sorted(leak)[0]!r} appears in both {a} and {b}")
    for s in SPLITS:
        expected = manifest.get("splits", {}).get(s, {}).get("rows", 0)
        if rows_per_split[s] != expected:
            raise _fail(release, MANIFEST_NAME, f"split {s}: shards hold {rows_per_split[s]} rows, manifest says {expected}")
    if sum(rows_per_split.values()) != manifest.get("rows"):
        raise _fail(release, MANIFEST_NAME, f"shards hold {sum(rows_per_split.values())} rows, manifest says {manifest.get('rows')}")


def verify_release(path: Path | str) -> VerifyReport:
    release = Path(path)
    if not release.is_dir():
        raise InfirError(f"release {release}: not a directory")
    manifest = load_manifest(release)
    listed: set[str] = {MANIFEST_NAME}

    fp = manifest.get("schema", {}).get("fingerprint")
    if fp != schema_fingerprint(RELEASE_SCHEMA):
        raise _fail(release, MANIFEST_NAME, f"schema fingerprint {fp} differs from this code's release schema")

    rows_per_split = {s: 0 for s in SPLITS}
    queries: dict[str, set[str]] = {s: set() for s in SPLITS}
    for shard in manifest.get("shards", []):
        rel = shard["path"]
        listed.add(rel)
        p = release / rel
        if not p.is_file():
            raise _fail(release, rel, "shard listed in the manifest is missing")
        digest = sha256_file(p)
        if digest != shard["sha256"]:
            raise _fail(release, rel, f"sha256 mismatch (manifest {shard['sha256'][:16]}…, file {digest[:16]}…)")
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - any parquet failure is a bad file
            raise _fail(release, rel, f"unreadable Parquet ({e})") from e
        if pf.metadata.num_rows != shard["rows"]:
            raise _fail(release, rel, f"{pf.metadata.num_rows} rows, manifest says {shard['rows']}")
        if not pf.schema_arrow.equals(RELEASE_SCHEMA, check_metadata=False):
            raise _fail(release, rel, "Arrow schema differs from the release schema")
        split = shard["split"]
        if split not in rows_per_split:
            raise _fail(release, rel, f"unknown split {split!r}")
        cols = pf.read(columns=["split", "query_id"])
        bad = set(cols.column("split").to_pylist()) - {split}
        if bad:
            raise _fail(release, rel, f"rows of split(s) {sorted(bad)} in a {split} shard")
        queries[split].update(cols.column("query_id").to_pylist())
        rows_per_split[split] += shard["rows"]

    _check_splits(release, manifest, rows_per_split, queries)

    for f in manifest.get("files", []):
        rel = f["path"]
        listed.add(rel)
        p = release / rel
        if not p.is_file():
            raise _fail(release, rel, "file listed in the manifest is missing")
        digest = sha256_file(p)
        if digest != f["sha256"]:
            raise _fail(release, rel, f"sha256 mismatch (manifest {f['sha256'][:16]}…, file {digest[:16]}…)")
        if rel.startswith(f"{TRIPLETS_DIR}/") and rel.endswith(".parquet"):
            if not pq.ParquetFile(p).schema_arrow.equals(ST_SCHEMA, check_metadata=False):
                raise _fail(release, rel, "schema differs from (anchor, positive, negative_1, negative_2)")

    on_disk = sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file())
    for rel in on_disk:
        if rel not in listed:
            raise _fail(release, rel, "file not listed in the manifest (would be published unchecked)")

    _verify_card(release, manifest)
    files = [(rel, (release / rel).stat().st_size) for rel in on_disk]
    return VerifyReport(
        path=release,
        name=manifest.get("name", ""),
        version=manifest.get("version", ""),
        rows=int(manifest.get("rows", 0)),
        rows_per_split=rows_per_split,
        shards=len(manifest.get("shards", [])),
        files=files,
    )


def _verify_card(release: Path, manifest: dict) -> None:
    card = release / "README.md"
    if not card.is_file():
        raise _fail(release, "README.md", "dataset card is missing")
    text = card.read_text(encoding="utf-8")
    try:
        meta = parse_front_matter(text)
    except Exception as e:  # noqa: BLE001 - YAML errors of any kind
        raise _fail(release, "README.md", f"invalid YAML front matter ({e})") from e
    configs = {c.get("config_name"): c for c in meta.get("configs") or [] if isinstance(c, dict)}
    default = configs.get("default")
    if not default:
        raise _fail(release, "README.md", "front matter has no 'default' config")
    shard_paths = {s["path"]: s["split"] for s in manifest.get("shards", [])}
    covered: set[str] = set()
    for entry in default.get("data_files") or []:
        patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        for pat in patterns:
            hits = [p for p in shard_paths if fnmatch.fnmatch(p, pat)]
            if not hits:
                raise _fail(release, "README.md", f"data_files pattern {pat!r} matches no shard")
            for h in hits:
                if shard_paths[h] != entry["split"]:
                    raise _fail(release, "README.md", f"pattern {pat!r} maps {h} to split {entry['split']!r}")
            covered.update(hits)
    missing = sorted(set(shard_paths) - covered)
    if missing:
        raise _fail(release, "README.md", f"shard {missing[0]} is not covered by the card's data_files")
    for rel in linked_files(text):
        if not (release / rel).is_file():
            raise _fail(release, rel, "linked from README.md but missing")
