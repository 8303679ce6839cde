"""write_release: accepted rows -> an immutable, versioned release directory."""

from __future__ import annotations

import os
import shutil
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import InfirError
from pipeline.fileio import write_bytes_atomic
from pipeline.release import card as card_mod
from pipeline.release import plots as plots_mod
from pipeline.release import stream
from pipeline.release.parquet_out import _PARQUET_OPTIONS, PARQUET_COMPRESSION, PARQUET_COMPRESSION_LEVEL, ParquetOut  # noqa: F401
from pipeline.release.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    content_diff,
    content_key,
    created_at,
    dumps,
    load_manifest,
    scrub,
    sha256_file,
    source_date_epoch,
)
from pipeline.release.schema import (
    INFIR_COLUMNS,
    RELEASE_SCHEMA,
    SPLITS,
    TRIPLETS_SCHEMA,
    schema_fields,
    schema_fingerprint,
)
from pipeline.release.paths import release_path
from pipeline.release.triplets import TRIPLETS_DIR, triplets_path, triplets_table
from pipeline.release.rows import AcceptedRows
from pipeline.release.splits import normalize_ratios
from pipeline.release.stream import Scan
from pipeline.validate import check_safe_name
from pipeline.release.versions import remove_stale_temp_dirs, bump_version, existing_versions, parse_version  # noqa: F401

DEFAULT_ST_TEMPLATE = "{query} {instruction}"
SPLIT_METHOD = "sha256(f'{seed}:{query_id}')[:8] / 2**64 vs cumulative ratios"

@dataclass(frozen=True)
class ReleaseResult:
    path: Path
    version: str
    created: bool


# --- stats --------------------------------------------------------------------------------------


def _length_summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    med = statistics.median(values)
    return {
        "min": min(values),
        "median": int(med) if float(med).is_integer() else round(float(med), 1),
        "mean": round(sum(values) / len(values), 2),
        "max": max(values),
    }


def _int(x: Any, default: int = 0) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return default


def _build_counts(stats: dict[str, Any], accepted_rows: int, checks: list[str]) -> dict[str, Any]:
    failures_in = stats.get("failures") or stats.get("per_check_failures") or stats.get("rejected_per_check") or {}
    failures = {str(k): _int(v) for k, v in dict(failures_in).items()}
    accepted = _int(stats.get("accepted"), accepted_rows)
    candidates = _int(stats.get("candidates"), accepted + _int(stats.get("rejected"), 0))
    rejected = _int(stats.get("rejected"), max(candidates - accepted, 0))
    all_checks = sorted(set(checks) | set(failures))
    pass_rate = {c: (round(1 - failures.get(c, 0) / candidates, 4) if candidates else None) for c in all_checks}
    return {
        "candidates": candidates,
        "accepted": accepted,
        "rejected": rejected,
        "released_rows": accepted_rows,
        "acceptance_rate": round(accepted / candidates, 4) if candidates else None,
        "failures": {c: failures.get(c, 0) for c in all_checks},
        "pass_rate": pass_rate,
    }


# --- writing ------------------------------------------------------------------------------------


def _write_text_atomic(path: Path, text: str) -> None:
    with stream.named_io(path):
        write_bytes_atomic(path, text.encode("utf-8"), fsync=False)


def _check_template(template: str) -> None:
    try:
        template.format(query="q", instruction="i")
    except (KeyError, IndexError, ValueError) as e:
        raise InfirError(
            f"invalid sentence-transformers template {template!r}: only {{query}} and {{instruction}} are allowed ({e})"
        ) from e


def _write_data(
    rows: AcceptedRows, sc: Scan, root: Path, max_rows: int, st_template: str | None
) -> tuple[list[dict], dict[str, dict], list[dict], list[dict]]:
    """Data shards (and the `triplets` config's files), one output row group in memory at a time.

    Returns the shard entries, the per-split counts, the st files and the card's example rows."""
    if st_template is not None:
        _check_template(st_template)
        (root / TRIPLETS_DIR).mkdir()
    (root / "data").mkdir(parents=True)
    shards: list[dict] = []
    st_files: list[dict] = []
    examples: list[dict] = []
    shard: ParquetOut | None = None
    st: ParquetOut | None = None
    spill_dir = root.with_name(root.name + "-spill")

    def close_shard() -> None:
        shards.append({"path": f"data/{shard.path.name}", "split": split, "rows": shard.rows, **shard.close()})

    def close_st() -> None:
        st.close()
        st_files.append({"path": triplets_path(st_split), "split": st_split, "rows": st.rows})

    split = st_split = None
    try:
        for bk in stream.spill(rows, sc, max_rows, spill_dir):
            # Files are closed before the next gather, so a shard's last rows are not held beside it.
            name = f"{bk.split}-{bk.shard:05d}-of-{bk.nshards:05d}.parquet"
            if shard is None or shard.path.name != name:
                if shard is not None:
                    close_shard()
                split = bk.split
                shard = ParquetOut(root / "data" / name, RELEASE_SCHEMA)
            if st_template is not None and (st is None or st_split != bk.split):
                if st is not None:
                    close_st()
                st_split = bk.split
                st = ParquetOut(root / triplets_path(bk.split), TRIPLETS_SCHEMA)
            t = stream.gather(bk)
            if not examples:
                examples = t.slice(0, 3).select(["id", "split", *INFIR_COLUMNS]).to_pylist()
            shard.write(t)
            if st is not None:
                st.write(triplets_table(t, st_template))
            del t
        if shard is not None:
            close_shard()
        if st is not None:
            close_st()
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    splits = {}
    for s in SPLITS:
        n = sum(x["rows"] for x in shards if x["split"] == s)
        splits[s] = {"rows": n, "queries": sc.queries[s] if n else 0,
                     "shards": sum(1 for x in shards if x["split"] == s)}
    return shards, splits, st_files, examples


def _build_release(
    rows: AcceptedRows,
    sc: Scan,
    stats: dict[str, Any],
    root: Path,
    name: str,
    version: str,
    seed: int,
    ratios: tuple[float, float, float],
    max_rows: int,
    st_export: bool,
    st_template: str,
    license: str | None,
    extra_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    shards, splits, st_files, examples = _write_data(rows, sc, root, max_rows, st_template if st_export else None)
    counts = _build_counts(stats, sc.rows, sc.checks)
    word_lengths = sc.word_lengths
    models = dict(stats.get("models") or {}) or {
        "generator": ", ".join(sc.unique["generator_model"]),
        "judge": ", ".join(sc.unique["judge_model"]),
    }
    prompt_hashes = dict(stats.get("prompt_hashes") or {}) or {
        "generate": ", ".join(sc.unique["prompt_generate"]),
        "poison": ", ".join(sc.unique["prompt_poison"]),
        "judge": ", ".join(sc.unique["prompt_judge"]),
    }
    tokens = dict(stats.get("tokens") or {})
    import pipeline

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created_at": created_at(),
        "code_version": str(stats.get("code_version") or pipeline.__version__),
        "license": license or stats.get("license") or "other",
        **{k: stats[k] for k in ("license_name", "license_link") if stats.get(k)},
        "rows": sc.rows,
        "splits": splits,
        "shards": shards,
        "split": {"method": SPLIT_METHOD, "seed": seed, "ratios": list(ratios), "by": "query_id"},
        "schema": {"fields": schema_fields(RELEASE_SCHEMA), "fingerprint": schema_fingerprint(RELEASE_SCHEMA)},
        "parquet": {
            "compression": PARQUET_COMPRESSION,
            "compression_level": PARQUET_COMPRESSION_LEVEL,
            "max_rows_per_shard": max_rows,
            "sort": "id",
        },
        "sources": sc.unique["source"],
        "models": models,
        "prompt_hashes": prompt_hashes,
        "backend": stats.get("backend"),
        "checks": sorted(counts["failures"]),
        "counts": counts,
        "tokens": {"prompt": _int(tokens.get("prompt")), "completion": _int(tokens.get("completion"))},
        "cost_usd": round(float(stats.get("cost_usd") or 0.0), 6),
        "llm_calls": _int(stats.get("llm_calls", stats.get("calls"))),
        "config": stats.get("config") or {},
        "lengths": {c: _length_summary(v) for c, v in word_lengths.items()},
        "st_export": None,
        **_audit_entry(stats),
    }
    if st_export:
        manifest["st_export"] = {"template": st_template, "files": st_files}
    if not plots_mod.available():
        manifest["plots_skipped"] = "matplotlib is not installed; pip install 'infir[plots]'"
    manifest = scrub(manifest)

    _draw_plots(root, word_lengths, counts)
    _write_text_atomic(root / "README.md", card_mod.render_card(manifest, examples))
    for rel, src in (extra_files or {}).items():  # e.g. the run's report.html, listed and checksummed below
        shutil.copyfile(src, root / rel)
    manifest["files"] = _file_entries(root)
    _write_text_atomic(root / MANIFEST_NAME, dumps(manifest))
    _check_no_local_paths(root)
    return manifest


def _audit_entry(stats: dict[str, Any]) -> dict[str, Any]:
    """The run's human audits: content, so an old version is never re-described (docs/release.md).
    None: no key, the manifest byte for byte what it was before audits existed."""
    return {"audit": stats["audit"]} if stats.get("audit") else {}


def _draw_plots(root: Path, word_lengths: dict, counts: dict) -> None:
    if plots_mod.available():
        (root / "plots").mkdir()
        with stream.named_io(root / card_mod.LENGTHS_PLOT):
            plots_mod.plot_lengths(word_lengths, root / card_mod.LENGTHS_PLOT)
        with stream.named_io(root / card_mod.REJECTIONS_PLOT):
            plots_mod.plot_rejections(counts["failures"], counts["candidates"], root / card_mod.REJECTIONS_PLOT)


def _file_entries(root: Path) -> list[dict]:
    """Every file of the release beside the data shards and the manifest: path, bytes, sha256."""
    return [
        {"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_NAME and p.parts[-2] != "data"
    ]


def _check_no_local_paths(root: Path) -> None:
    """Defensive: the text files of a release must not mention local absolute paths."""
    needles = {str(root.resolve()), str(root.resolve().parent.parent)}
    home = str(Path.home())
    if home and home != os.sep:
        needles.add(home + os.sep)
    for p in (root / MANIFEST_NAME, root / "README.md"):
        text = p.read_text(encoding="utf-8")
        for n in needles:
            if n and n != os.sep and n in text:
                raise InfirError(f"{p.name} would publish a local path ({n!r}); refusing to write the release")


def write_release(
    table: pa.Table | Sequence[Path],
    stats: dict[str, Any],
    releases_root: Path,
    name: str,
    version: str | None = None,
    bump: str | None = None,
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 13,
    max_rows_per_shard: int = 50_000,
    st_export: bool = True,
    *,
    st_template: str = DEFAULT_ST_TEMPLATE,
    license: str | None = None,
    extra_files: dict[str, Path] | None = None,
) -> ReleaseResult:
    """Write `releases_root/<name>/<version>/` atomically; identical content is a no-op.

    version/bump: explicit `version`; or `bump` (patch|minor|major) of the highest existing version
    (1.0.0 if none); or neither: the latest existing version (no-op if identical, refusal if not), else 1.0.0.
    A bump whose content equals the latest version's is a no-op returning that version (created=False).
    `table`: the accepted rows, or the paths of Parquet shards holding them (read batch by batch, so
    memory stays about one output row group whatever the number of rows).
    """
    try:
        check_safe_name(name or "")
    except ValueError:
        raise InfirError(f"invalid release name {name!r}: use letters, digits, '.', '_' or '-'") from None
    if version is not None and bump is not None:
        raise InfirError("give either a version or --bump, not both")
    if max_rows_per_shard < 1:
        raise InfirError(f"max_rows_per_shard must be >= 1, got {max_rows_per_shard}")
    source_date_epoch()  # refused before the rows are read, not after
    if version is not None:
        parse_version(version)
    ratios = normalize_ratios(split_ratios)
    releases_root = Path(releases_root)
    name_dir = releases_root / name
    versions = existing_versions(name_dir)
    latest = versions[-1] if versions else None
    compare_to: str | None = None
    if version is None:
        if bump is not None:
            version = bump_version(latest, bump) if latest else "1.0.0"
            compare_to = latest
        else:
            version = latest or "1.0.0"

    return _write_versioned(
        AcceptedRows(table), stats, name_dir, name, version, compare_to, seed, ratios,
        max_rows_per_shard, st_export, st_template, license, extra_files,
    )


def _write_versioned(
    rows: AcceptedRows,
    stats: dict[str, Any],
    name_dir: Path,
    name: str,
    version: str,
    compare_to: str | None,
    seed: int,
    ratios: tuple[float, float, float],
    max_rows_per_shard: int,
    st_export: bool,
    st_template: str,
    license: str | None,
    extra_files: dict[str, Path] | None = None,
) -> ReleaseResult:
    rows.check_columns()
    sc = stream.scan(rows, seed, ratios)
    name_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(name_dir)
    # The writer's pid in the name: a later writer can tell a dead writer's leftovers from a live one's.
    tmp = name_dir / f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        try:
            manifest = _build_release(
                rows, sc, stats, tmp, name, version, seed, ratios, max_rows_per_shard, st_export, st_template, license,
                extra_files,
            )
        except OSError as e:
            raise InfirError(_write_error(e, tmp, name_dir / version)) from None
        if compare_to is not None:
            prev = load_manifest(name_dir / compare_to)
            if _same_content(prev, manifest):
                return ReleaseResult(path=name_dir / compare_to, version=compare_to, created=False)
        target = name_dir / version
        for _ in range(2):
            if target.exists():
                return _existing(target, name, version, manifest)
            try:
                os.rename(tmp, target)
                _fsync_dir(name_dir)
                return ReleaseResult(path=target, version=version, created=True)
            except OSError:
                if not target.exists():
                    raise
        return _existing(target, name, version, manifest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_error(e: OSError, tmp: Path, target: Path) -> str:
    """One line naming the file (as it would be named in the finished release) that could not be
    written; the release folder when the OS named none (e.g. the sort's spill files)."""
    reason = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    if not e.filename:
        return f"{target}: cannot write release: {reason}"
    p = Path(os.fsdecode(e.filename))
    if p.is_relative_to(tmp):
        return f"{target / p.relative_to(tmp)}: cannot write release: {reason}"
    return f"{target}: cannot write release: {reason} (writing the temporary file {p})"


def _same_content(prev: dict[str, Any], new: dict[str, Any]) -> bool:
    prev = {**prev, "version": new["version"]}
    return content_key(prev) == content_key(new)


def _existing(target: Path, name: str, version: str, manifest: dict[str, Any]) -> ReleaseResult:
    try:
        prev = load_manifest(target)
    except InfirError as e:
        raise InfirError(
            f"release {name} {version} already exists but is not a complete release ({e}); "
            "releases are immutable: remove it by hand or use --bump / a new --version"
        ) from e
    if content_key(prev) == content_key(manifest):
        for shard in prev.get("shards", []):  # the same paths as this content's: data/<split>-...
            p = release_path(target, shard["path"], MANIFEST_NAME)  # a symlinked shard is not "this content"
            if not p.is_file() or sha256_file(p) != shard["sha256"]:
                raise InfirError(
                    f"release {name} {version} already exists but {shard['path']} does not match its manifest "
                    "(missing or modified); releases are immutable: restore it, or use --bump / a new --version"
                )
        return ReleaseResult(path=target, version=version, created=False)
    diff = ", ".join(content_diff(prev, manifest)) or "content"
    raise InfirError(
        f"release {name} {version} already exists with different content ({diff} differ); "
        "releases are immutable: use --bump patch|minor|major or a new --version"
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
