"""write_release: accepted rows -> an immutable, versioned release directory."""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import InfirError
from pipeline.release import card as card_mod
from pipeline.release import plots as plots_mod
from pipeline.release.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    content_diff,
    content_key,
    dumps,
    load_manifest,
    scrub,
    sha256_file,
)
from pipeline.release.schema import (
    INFIR_COLUMNS,
    INPUT_COLUMNS,
    RELEASE_SCHEMA,
    REQUIRED_NON_EMPTY,
    SPLITS,
    ST_SCHEMA,
    schema_fields,
    schema_fingerprint,
)
from pipeline.release.splits import assign_splits, normalize_ratios

PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 9
ROW_GROUP_SIZE = 10_000
DEFAULT_ST_TEMPLATE = "{query} {instruction}"
SPLIT_METHOD = "sha256(f'{seed}:{query_id}')[:8] / 2**64 vs cumulative ratios"

_VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ReleaseResult:
    path: Path
    version: str
    created: bool


# --- versions -----------------------------------------------------------------------------------


def parse_version(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v or "")
    if not m:
        raise InfirError(f"invalid release version {v!r}: expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    return int(m[1]), int(m[2]), int(m[3])


def existing_versions(name_dir: Path) -> list[str]:
    """Completed versions under releases/<name>/, oldest first (temp dirs are ignored)."""
    if not name_dir.is_dir():
        return []
    vs = [p.name for p in name_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    return sorted(vs, key=parse_version)


def bump_version(version: str, bump: str) -> str:
    major, minor, patch = parse_version(version)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise InfirError(f"invalid bump {bump!r}: expected patch, minor or major")


# --- input preparation --------------------------------------------------------------------------


def _prepare_table(table: pa.Table, seed: int, ratios: tuple[float, float, float]) -> pa.Table:
    missing = [c for c in INPUT_COLUMNS if c not in table.column_names]
    if missing:
        raise InfirError(f"accepted table lacks release column(s): {', '.join(missing)}")
    t = table.select(list(INPUT_COLUMNS)).combine_chunks()
    for c in REQUIRED_NON_EMPTY:
        col = t.column(c)
        bad = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_length(pc.cast(col, pa.string())), 0))
        bad = pc.fill_null(bad, True)
        if pc.any(bad).as_py():
            idx = pc.index(bad, True).as_py()
            rid = t.column("id")[idx].as_py()
            raise InfirError(f"accepted row {idx} (id {rid!r}) has an empty {c!r}; every release row needs it")
    ids = t.column("id")
    if pc.count_distinct(ids).as_py() != t.num_rows:
        counts = pc.value_counts(ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise InfirError(f"duplicate row id {dup!r} in accepted rows; ids must be unique")
    splits = assign_splits(t.column("query_id").to_pylist(), seed, ratios)
    t = t.append_column("split", pa.array(splits, pa.string()))
    try:
        t = t.cast(RELEASE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InfirError(f"accepted rows do not fit the release schema: {e}") from e
    return t.sort_by([("id", "ascending")])


# --- stats --------------------------------------------------------------------------------------


def _word_lengths(t: pa.Table, col: str) -> list[int]:
    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(t.column(col)))
    return [int(x) for x in pc.list_value_length(words).to_pylist()]


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


def _unique_strings(t: pa.Table, col: str) -> list[str]:
    return sorted(v for v in pc.unique(t.column(col)).to_pylist() if v)


def _verdict_checks(t: pa.Table) -> list[str]:
    flat = pc.list_flatten(t.column("verdicts"))
    if len(flat) == 0:
        return []
    return sorted(v for v in pc.unique(pc.struct_field(flat, "check")).to_pylist() if v)


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


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(
        table,
        tmp,
        compression=PARQUET_COMPRESSION,
        compression_level=PARQUET_COMPRESSION_LEVEL,
        row_group_size=ROW_GROUP_SIZE,
        use_dictionary=True,
        write_statistics=True,
    )
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _write_shards(t: pa.Table, root: Path, max_rows: int) -> tuple[list[dict], dict[str, dict]]:
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    shards: list[dict] = []
    splits: dict[str, dict] = {}
    split_col = t.column("split")
    for s in SPLITS:
        sub = t.filter(pc.equal(split_col, s))
        n = sub.num_rows
        nshards = math.ceil(n / max_rows) if n else 0
        splits[s] = {
            "rows": n,
            "queries": pc.count_distinct(sub.column("query_id")).as_py() if n else 0,
            "shards": nshards,
        }
        for i in range(nshards):
            part = sub.slice(i * max_rows, max_rows)
            rel = f"data/{s}-{i:05d}-of-{nshards:05d}.parquet"
            _write_parquet_atomic(part, root / rel)
            shards.append(
                {
                    "path": rel,
                    "split": s,
                    "rows": part.num_rows,
                    "bytes": (root / rel).stat().st_size,
                    "sha256": sha256_file(root / rel),
                }
            )
    return shards, splits


def st_triplets(t: pa.Table, template: str) -> pa.Table:
    """Three (anchor, positive, negative) triplets per row, in row order."""

    def fmt(q: str, i: str) -> str:
        return template.format(query=q, instruction=i).strip()

    anchors, positives, negatives = [], [], []
    cols = {c: t.column(c).to_pylist() for c in INFIR_COLUMNS}
    for k in range(t.num_rows):
        qp, ip, pp = cols["query_positive"][k], cols["instruction_positive"][k], cols["document_positive"][k]
        ineg, hn1 = cols["instruction_negative"][k], cols["hard_negative_document_1"][k]
        qn, hn2 = cols["query_negative"][k], cols["hard_negative_document_2"][k]
        anchors += [fmt(qp, ip), fmt(qp, ineg), fmt(qn, ip)]
        positives += [pp, hn1, hn2]
        negatives += [hn1, pp, pp]
    return pa.table({"anchor": anchors, "positive": positives, "negative": negatives}, schema=ST_SCHEMA)


def _write_st(t: pa.Table, root: Path, template: str) -> list[dict]:
    try:
        template.format(query="q", instruction="i")
    except (KeyError, IndexError, ValueError) as e:
        raise InfirError(
            f"invalid sentence-transformers template {template!r}: only {{query}} and {{instruction}} are allowed ({e})"
        ) from e
    (root / "st").mkdir()
    out = []
    for s in SPLITS:
        sub = t.filter(pc.equal(t.column("split"), s))
        if sub.num_rows == 0:
            continue
        rel = f"st/{s}.parquet"
        trip = st_triplets(sub, template)
        _write_parquet_atomic(trip, root / rel)
        out.append({"path": rel, "split": s, "rows": trip.num_rows})
    return out


def _created_at() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde and sde.isdigit():
        return datetime.fromtimestamp(int(sde), timezone.utc).isoformat(timespec="seconds")
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _build_release(
    t: pa.Table,
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
) -> dict[str, Any]:
    shards, splits = _write_shards(t, root, max_rows)
    checks = _verdict_checks(t)
    counts = _build_counts(stats, t.num_rows, checks)
    word_lengths = {c: _word_lengths(t, c) for c in INFIR_COLUMNS}
    models = dict(stats.get("models") or {}) or {
        "generator": ", ".join(_unique_strings(t, "generator_model")),
        "judge": ", ".join(_unique_strings(t, "judge_model")),
    }
    prompt_hashes = dict(stats.get("prompt_hashes") or {}) or {
        "generate": ", ".join(_unique_strings(t, "prompt_generate")),
        "poison": ", ".join(_unique_strings(t, "prompt_poison")),
        "judge": ", ".join(_unique_strings(t, "prompt_judge")),
    }
    tokens = dict(stats.get("tokens") or {})
    import pipeline

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created_at": _created_at(),
        "code_version": str(stats.get("code_version") or pipeline.__version__),
        "license": license or stats.get("license") or "other",
        "rows": t.num_rows,
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
        "sources": _unique_strings(t, "source"),
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
    }
    if st_export:
        manifest["st_export"] = {"template": st_template, "files": _write_st(t, root, st_template)}
    manifest = scrub(manifest)

    (root / "plots").mkdir()
    plots_mod.plot_lengths(word_lengths, root / card_mod.LENGTHS_PLOT)
    plots_mod.plot_rejections(counts["failures"], counts["candidates"], root / card_mod.REJECTIONS_PLOT)

    first_split = next((s for s in SPLITS if splits[s]["rows"]), None)
    examples: list[dict] = []
    if first_split:
        ex = t.filter(pc.equal(t.column("split"), first_split)).slice(0, 3)
        examples = ex.select(["id", "split", *INFIR_COLUMNS]).to_pylist()
    _write_text_atomic(root / "README.md", card_mod.render_card(manifest, examples))

    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_NAME and p.parts[-2] != "data":
            rel = p.relative_to(root).as_posix()
            files.append({"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    manifest["files"] = files
    _write_text_atomic(root / MANIFEST_NAME, dumps(manifest))
    _check_no_local_paths(root)
    return manifest


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
    table: pa.Table,
    stats: dict[str, Any],
    releases_root: Path,
    name: str,
    version: str | None = None,
    bump: str | None = None,
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 13,
    max_rows_per_shard: int = 50_000,
    st_export: bool = False,
    *,
    st_template: str = DEFAULT_ST_TEMPLATE,
    license: str | None = None,
) -> ReleaseResult:
    """Write `releases_root/<name>/<version>/` atomically; identical content is a no-op.

    version/bump: explicit `version`; or `bump` (patch|minor|major) of the highest existing version
    (1.0.0 if none); or neither: the latest existing version (no-op if identical, refusal if not), else 1.0.0.
    A bump whose content equals the latest version's is a no-op returning that version (created=False).
    """
    if not _NAME_RE.match(name or ""):
        raise InfirError(f"invalid release name {name!r}: use letters, digits, '.', '_' or '-'")
    if version is not None and bump is not None:
        raise InfirError("give either a version or --bump, not both")
    if max_rows_per_shard < 1:
        raise InfirError(f"max_rows_per_shard must be >= 1, got {max_rows_per_shard}")
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

    t = _prepare_table(table, seed, ratios)
    name_dir.mkdir(parents=True, exist_ok=True)
    tmp = name_dir / f".tmp-{version}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        manifest = _build_release(
            t, stats, tmp, name, version, seed, ratios, max_rows_per_shard, st_export, st_template, license
        )
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
        for shard in prev.get("shards", []):
            p = target / shard["path"]
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
